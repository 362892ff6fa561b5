"""A model directory's identity: a cheap fingerprint of its weights, config and tokenizer files.

Used to key derived artefacts (a trimmed vocabulary) by the model they came from, so a derived directory left by
a run on another base model is never taken for this one. Hashing multi-GB weights in full on every run would cost
seconds to minutes, so weights are identified by size, modification time and the hash of their first and last
MiB (a safetensors file starts with its header: names, shapes, offsets); small files are hashed whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SAMPLE = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """``{file name: {size, mtime_ns, sha256}}`` for the weights and the tokenizer/config files of ``model_dir``."""
    files = sorted(path for path in model_dir.iterdir() if path.is_file())
    prints: dict[str, Any] = {}
    for path in files:
        if path.suffix in _WEIGHT_SUFFIXES:
            prints[path.name] = _file_print(path, sampled=True)
        elif path.name in _SMALL_FILES or path.suffix == ".model":
            prints[path.name] = _file_print(path, sampled=False)
    return prints


def texts_fingerprint(texts: Iterable[str]) -> str:
    """sha256 of the texts in order (each one terminated by a NUL, which no text contains)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def _file_print(path: Path, *, sampled: bool) -> dict[str, Any]:
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if sampled and stat.st_size > 2 * _SAMPLE:
            digest.update(handle.read(_SAMPLE))
            handle.seek(-_SAMPLE, 2)
            digest.update(handle.read(_SAMPLE))
        else:
            digest.update(handle.read())
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
