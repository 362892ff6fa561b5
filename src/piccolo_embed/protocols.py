"""Seams between parts of piccolo-embed, as structural types, so tests and other models can stand in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from piccolo_embed.types import Role


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors for a role.

    The evaluator, the miner and the server depend on this, not on :class:`~piccolo_embed.Embedder`.
    """

    def encode(self, texts: Sequence[str], *, role: Role | str | None = None) -> np.ndarray:
        """Return an array of shape ``(len(texts), dim)``, rows in input order."""
        ...
