"""Closed choices and role settings shared by every part of piccolo-embed.

Roles are data, not code paths: the encoder, the collator, the miner, the evaluator and the server all look up a
:class:`RoleSpec` for a :class:`Role`, and the specs travel with the model (``piccolo_embed.json``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Self


class HelpfulEnum(enum.StrEnum):
    """A ``StrEnum`` whose parse error lists the valid choices."""

    @classmethod
    def parse(cls, value: str | Self) -> Self:
        """Return the member for ``value``, or raise a ``ValueError`` naming the valid choices."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown {cls.__name__} {value!r}; choose one of: {choices}") from None


class Role(HelpfulEnum):
    """Which side of a search a text is on.

    ``NONE`` is the short-to-short setting (STS, classification, clustering): no instruction.
    """

    QUERY = "query"
    PASSAGE = "passage"
    NONE = "none"

    @classmethod
    def coerce(cls, value: Role | str | None) -> Role:
        """Map ``None`` to :attr:`NONE` and parse strings; the one place API arguments become a ``Role``."""
        return cls.NONE if value is None else cls.parse(value)


class TaskKind(HelpfulEnum):
    """Whether the two sides of a pair are different kinds of text.

    ``s2p`` (short query, long passage: retrieval, reranking) encodes the first side with the query role and the
    second with the passage role. ``s2s`` (paraphrase, NLI, STS-like pairs) encodes both sides with ``none``:
    either side could be the query, and neither gets a retrieval instruction.
    """

    S2P = "s2p"
    S2S = "s2s"

    @property
    def roles(self) -> tuple[Role, Role]:
        """Roles of the first side (query, sentence1) and of the second side (passages, sentence2)."""
        return (Role.QUERY, Role.PASSAGE) if self is TaskKind.S2P else (Role.NONE, Role.NONE)

    @property
    def query_role(self) -> Role:
        """Role of the query side."""
        return self.roles[0]

    @property
    def passage_role(self) -> Role:
        """Role of the corpus side."""
        return self.roles[1]


class Device(HelpfulEnum):
    """Where inference runs; ``AUTO`` picks CUDA when it is available."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Quantization(HelpfulEnum):
    """Weight quantisation applied after an fp32 ONNX export."""

    NONE = "none"
    INT8 = "int8"


class Precision(HelpfulEnum):
    """Numeric precision of the forward pass, in training and at inference; :meth:`resolve` decides what runs."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    def resolve(self, device_type: str, *, fast_bf16: bool | None = None) -> Precision:
        """The precision that runs on ``device_type``: ``AUTO`` made concrete, a slow or impossible choice refused.

        The one table for training (autocast) and inference (autocast on CUDA, bf16 weights on CPU):

        ========  ======================================  ==========================
        asked     CUDA                                    CPU
        ========  ======================================  ==========================
        auto      bf16 where the GPU supports it, else    bf16 with AMX, else fp32
                  fp16
        fp32      fp32                                    fp32
        fp16      fp16                                    refused
        bf16      bf16                                    bf16 with AMX, else refused
        ========  ======================================  ==========================

        A CPU without AMX emulates bf16, slower than fp32, so bf16 there is refused rather than silently slow.

        Args:
            device_type: ``"cuda"`` or ``"cpu"`` (a ``torch.device``'s ``type``).
            fast_bf16: Whether the device runs bf16 at speed (a GPU with bf16 support, a CPU with AMX); probed
                when ``None``.

        Raises:
            ValueError: fp16 on CPU, or bf16 on a CPU without AMX.
        """
        cuda = device_type == "cuda"
        if self is Precision.FP16 and not cuda:
            raise ValueError("precision fp16 needs CUDA; on CPU use fp32, or bf16 on a CPU with AMX")
        if self in (Precision.FP32, Precision.FP16) or (self is Precision.BF16 and cuda):
            return self
        if fast_bf16 is None:
            from piccolo_embed.hardware import bf16_is_fast

            fast_bf16 = bf16_is_fast(device_type)
        if self is Precision.BF16 and not fast_bf16:  # on CPU: CUDA returned above
            raise ValueError(
                "precision bf16 on CPU needs AMX (Intel Sapphire Rapids or later) and this CPU has no AMX: "
                "bf16 would be slower than fp32 here; use fp32"
            )
        if fast_bf16:
            return Precision.BF16
        return Precision.FP16 if cuda else Precision.FP32  # AUTO without fast bf16


class Engine(HelpfulEnum):
    """What runs an embedder's forward pass: PyTorch, or ONNX Runtime on a graph from ``piccolo-embed export``.

    ``torch`` runs at the :class:`Precision` asked for (the only engine that takes one); ``torch-bf16`` is torch
    at bf16. ``onnx`` runs the fp32 graph and ``onnx-int8`` its dynamically quantised copy, both on CPU.
    """

    TORCH = "torch"
    TORCH_BF16 = "torch-bf16"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"

    @property
    def onnx(self) -> bool:
        """Whether ONNX Runtime runs the graph (CPU only; the export must exist)."""
        return self in (Engine.ONNX, Engine.ONNX_INT8)

    def precision(self, asked: Precision) -> Precision:
        """The precision torch runs at: ``asked`` for ``torch``, bf16 for ``torch-bf16`` (``auto`` for ONNX).

        Raises:
            ValueError: A precision other than ``auto`` for an engine that fixes its own.
        """
        if self is Engine.TORCH:
            return asked
        if asked is not Precision.AUTO:
            raise ValueError(f"precision {asked.value} applies to engine torch only; engine {self.value} fixes its own")
        return Precision.BF16 if self is Engine.TORCH_BF16 else asked


@dataclass(frozen=True)
class RoleSpec:
    """How texts of one role are prepared: an instruction prefix and a token budget.

    Attributes:
        prefix: Text prepended before tokenisation (e.g. ``"查询："``); empty for no instruction.
        max_length: Maximum number of tokens, special tokens included; longer inputs are truncated.
    """

    prefix: str
    max_length: int

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise TypeError(f"RoleSpec.prefix must be a string, got {type(self.prefix).__name__}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"RoleSpec.max_length must be an integer >= 2, got {self.max_length!r}")

    def to_dict(self) -> dict[str, str | int]:
        """JSON-ready form."""
        return {"prefix": self.prefix, "max_length": self.max_length}


RoleSpecs = dict[Role, RoleSpec]


class RolePreset(HelpfulEnum):
    """Named role settings for well-known model families."""

    PICCOLO = "piccolo"
    PICCOLO_TRAIN = "piccolo-train"
    E5 = "e5"
    PLAIN = "plain"

    def specs(self, max_length: int = 512) -> RoleSpecs:
        """Role specs of this preset; ``max_length`` is the model's limit (used for passages and ``NONE``)."""
        query_prefix, passage_prefix, query_len = _PRESETS[self]
        return {
            Role.QUERY: RoleSpec(query_prefix, min(query_len or max_length, max_length)),
            Role.PASSAGE: RoleSpec(passage_prefix, max_length),
            Role.NONE: RoleSpec("", max_length),
        }


# prefix for queries, prefix for passages, query max length (None: the model's limit).
# piccolo's usage code writes a full-width colon with no space; its training notes write "查询: ".
_PRESETS: dict[RolePreset, tuple[str, str, int | None]] = {
    RolePreset.PICCOLO: ("查询：", "结果：", 64),
    RolePreset.PICCOLO_TRAIN: ("查询: ", "结果: ", 64),
    RolePreset.E5: ("query: ", "passage: ", None),
    RolePreset.PLAIN: ("", "", None),
}
