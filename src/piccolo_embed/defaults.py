"""Defaults that the library, the CLI and the server share, each defined once."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the cache root (converted starter model, Arrow caches of training data).
CACHE_ENV = "PICCOLO_EMBED_CACHE"
#: Most texts per forward pass.
BATCH_SIZE = 64
#: Most padded tokens per forward pass: with the length-sorted batches it bounds activation memory.
MAX_BATCH_TOKENS = 16384


def cache_root() -> Path:
    """``$PICCOLO_EMBED_CACHE``, else ``~/.cache/piccolo-embed`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "piccolo-embed"
