"""Which model built an index: name, dimension, role prefixes and the embeddings of a few fixed probe texts.

Vectors from two different models live in unrelated spaces, so searching an index with another model
returns confident nonsense. Names and paths are not enough to catch that (a directory can be retrained
in place), so the index keeps the probe embeddings themselves and a query-time encoder must reproduce
them. They are compared with a cosine tolerance rather than by hash, because the same model on another
device or precision moves the last bits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from piccolo_embed.errors import ModelMismatchError
from piccolo_embed.protocols import Encoder
from piccolo_embed.types import Role

# Characters the tiny test model knows too, so the probes are informative for it as well; one English text
# for English models.
PROBE_TEXTS = (
    "今天天气很好，我们去公园散步。",
    "中国的首都是北京吗？",
    "如何学习深度神经网络模型训练",
    "the quick brown fox jumps over the lazy dog",
)
PROBE_ROLES = (Role.QUERY, Role.PASSAGE, Role.NONE)
# fp16/bf16 against fp32 stays above 0.999 on our models; two different models fall far below.
MIN_PROBE_COSINE = 0.995


@dataclass(frozen=True)
class ModelFingerprint:
    """What identifies the model behind an index.

    Attributes:
        name: How the model was specified (a path, a hub id, ``starter``); used to reload it for search.
        dim: Embedding dimension.
        roles: Role name to ``{"prefix", "max_length"}``; empty when the encoder does not expose its roles.
        probes: ``(len(PROBE_ROLES) * len(PROBE_TEXTS), dim)`` float32 probe embeddings, role-major.
    """

    name: str
    dim: int
    roles: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    probes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32), repr=False)

    @property
    def digest(self) -> str:
        """A short hash of the probe embeddings (rounded, so it is stable across devices in most cases).

        Only for display and logs; :func:`check_same_model` compares the vectors themselves.
        """
        rounded = np.round(self.probes.astype(np.float64), 3)
        return hashlib.sha256(rounded.tobytes()).hexdigest()[:16]

    def to_json(self) -> dict[str, object]:
        """Manifest form; the probe vectors are stored next to it as ``.npy``."""
        return {"name": self.name, "dim": self.dim, "roles": dict(self.roles), "digest": self.digest}

    @classmethod
    def from_json(cls, payload: Mapping[str, object], probes: np.ndarray) -> ModelFingerprint:
        """Inverse of :meth:`to_json`."""
        return cls(
            name=str(payload["name"]),
            dim=int(payload["dim"]),  # type: ignore[call-overload]
            roles=dict(payload.get("roles") or {}),  # type: ignore[call-overload]
            probes=np.asarray(probes, dtype=np.float32),
        )


def fingerprint_encoder(encoder: Encoder, *, name: str | None = None) -> ModelFingerprint:
    """Encode the probe texts with every role and collect what identifies ``encoder``.

    Args:
        encoder: Any :class:`~piccolo_embed.protocols.Encoder`; ``name`` and ``roles`` attributes are used
            when present (as on :class:`~piccolo_embed.Embedder`).
        name: Overrides the encoder's own name (the CLI passes an absolute path so search can reload it).
    """
    blocks = [np.asarray(encoder.encode(list(PROBE_TEXTS), role=role), dtype=np.float32) for role in PROBE_ROLES]
    probes = np.concatenate(blocks, axis=0)
    roles = getattr(encoder, "roles", None) or {}
    return ModelFingerprint(
        name=name or str(getattr(encoder, "name", "") or type(encoder).__name__),
        dim=int(probes.shape[1]),
        roles={Role.coerce(role).value: spec.to_dict() for role, spec in roles.items()},
        probes=probes,
    )


def check_same_model(recorded: ModelFingerprint, current: ModelFingerprint) -> None:
    """Raise unless ``current`` reproduces the model that built the index.

    Raises:
        ModelMismatchError: Dimension, role prefixes or probe embeddings differ; the message says which.
    """
    head = (
        f"the index was built with model {recorded.name!r} (dim {recorded.dim}, fingerprint {recorded.digest}) "
        f"but the given model is {current.name!r} (dim {current.dim}, fingerprint {current.digest})"
    )
    if recorded.dim != current.dim:
        raise ModelMismatchError(f"{head}: embedding dimensions differ")
    for role, spec in recorded.roles.items():
        other = current.roles.get(role)
        if other is not None and other.get("prefix") != spec.get("prefix"):
            raise ModelMismatchError(
                f"{head}: {role} prefix differs ({spec.get('prefix')!r} vs {other.get('prefix')!r})"
            )
    if recorded.probes.shape != current.probes.shape:
        raise ModelMismatchError(f"{head}: probe sets differ (index from another piccolo-embed version?)")
    cosine = float(np.min(np.sum(recorded.probes * current.probes, axis=1)))
    if cosine < MIN_PROBE_COSINE:
        raise ModelMismatchError(
            f"{head}: probe embeddings differ (lowest cosine {cosine:.4f} < {MIN_PROBE_COSINE}); "
            f"search with the model that built the index or rebuild it"
        )
