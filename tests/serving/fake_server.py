"""A real ``piccolo-embed`` server process around a scripted fake model, for tests that need signals and sockets.

    python tests/serving/fake_server.py PORT '{"api_key": "k", "drain_s": 0.5}'

The second argument holds :class:`ServerSettings` fields. The fake model answers in microseconds except for
texts that script it: ``slow`` makes its forward pass sleep 0.5 s (``stall``: 3 s), ``nan`` gives its row NaN
values. When ``$PICCOLO_FAKE_STALL_FILE`` names a file, a ``stall`` pass creates it as it begins and then
holds the model until the file ``<name>.release`` exists (at most 60 s), so a test knows the model is busy,
and for how long, rather than guessing from the clock.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from piccolo_embed.serving.app import build_app
from piccolo_embed.serving.server import serve
from piccolo_embed.serving.settings import ServerSettings
from piccolo_embed.types import Role, RoleSpec

STALL_FILE_ENV = "PICCOLO_FAKE_STALL_FILE"
SLOW_PASS_S = 0.5
STALL_S = 3.0
HOLD_LIMIT_S = 60.0  # a test that never releases a held stall pass does not hang the server
DIM = 8


class ScriptedModel:
    """Token ids are code points; a vector is a function of the ids; ``slow`` and ``nan`` texts script it."""

    name = "scripted"
    dim = DIM
    roles = {role: RoleSpec(prefix="", max_length=64) for role in Role}  # noqa: RUF012

    @property
    def tokenizer(self) -> object:
        """Unused: the tests never send ``"long": "mean"``."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str], role: Role | str | None = None) -> list[list[int]]:
        """One id per character, truncated to the role's limit."""
        return [[ord(char) for char in text[:64]] for text in texts]

    def count_tokens(self, texts: Sequence[str], role: Role | str | None = None, *, truncate: bool = True) -> list[int]:
        """One token per character, up to the role's limit unless ``truncate`` is off."""
        return [min(len(text), 64) if truncate else len(text) for text in texts]

    def encode_ids(self, ids: Sequence[Sequence[int]], **_: object) -> np.ndarray:
        """Unit vectors; a pass with a ``slow`` or ``stall`` text sleeps first, a ``nan`` text gets a NaN row."""
        texts = ["".join(map(chr, row)) for row in ids]
        if "stall" in texts and os.environ.get(STALL_FILE_ENV):
            _hold(Path(os.environ[STALL_FILE_ENV]))
        elif "slow" in texts or "stall" in texts:
            time.sleep(STALL_S if "stall" in texts else SLOW_PASS_S)
        vectors = np.ones((len(ids), DIM), dtype=np.float32) / np.sqrt(DIM)
        vectors[:, 0] *= np.array([len(row) for row in ids], dtype=np.float32) / 64
        vectors[[text == "nan" for text in texts]] = np.nan
        return vectors


def _hold(stall_file: Path) -> None:
    """Announce a stall pass (create ``stall_file``), then wait until the test creates its ``.release`` file."""
    release = stall_file.with_suffix(".release")
    stall_file.touch()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def main(argv: Sequence[str]) -> None:
    """Serve the scripted model on loopback port ``argv[0]`` with settings ``argv[1]`` (JSON)."""
    settings = ServerSettings(**json.loads(argv[1]))
    serve(build_app(ScriptedModel(), settings), settings, host="127.0.0.1", port=int(argv[0]), log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
