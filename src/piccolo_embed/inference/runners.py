"""Forward-pass backends: a padded batch of token ids in, one L2-normalised embedding per row out.

The :class:`~piccolo_embed.inference.embedder.Embedder` owns tokenisation, roles and batching; a runner owns only
the model call, so another backend (ONNX Runtime) plugs in without touching the batching code.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from piccolo_embed.types import Precision

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sentence_transformers import SentenceTransformer


class BatchRunner(Protocol):
    """Embeds one padded batch."""

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Return float32 ``(rows, dim)`` embeddings for int64 ``(rows, width)`` ids and mask."""
        ...


class TorchRunner:
    """Runs a sentence-transformers model under ``inference_mode``: autocast on CUDA, plain fp32 on CPU.

    Autocast never runs on CPU: it re-casts every weight on every call; bf16 on CPU goes through
    :class:`~piccolo_embed.inference.cpu_bf16.CpuBf16Runner`, which casts the weights once.

    Args:
        model: The model, on the device it runs on.
        precision: Resolved by :meth:`Precision.resolve` for the model's device.

    Raises:
        ValueError: The precision resolves to half precision on a CPU.
    """

    def __init__(self, model: SentenceTransformer, precision: Precision | str = Precision.FP32) -> None:
        self.model = model
        resolved = Precision.parse(precision).resolve(model.device.type)
        if model.device.type != "cuda" and resolved is not Precision.FP32:
            raise ValueError(f"the padded torch runner runs fp32 on CPU, not {resolved.value}; bf16 has its own runner")
        self.autocast_dtype = _AUTOCAST_DTYPES[resolved]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Embed one padded batch."""
        device = self.model.device
        features = {
            "input_ids": torch.from_numpy(input_ids).to(device),
            "attention_mask": torch.from_numpy(attention_mask).to(device),
        }
        with torch.inference_mode(), self._autocast():
            embeddings = self.model.forward(features)["sentence_embedding"]
        return embeddings.float().cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.model.device.type, dtype=self.autocast_dtype)


_AUTOCAST_DTYPES: dict[Precision, torch.dtype | None] = {
    Precision.FP32: None,
    Precision.FP16: torch.float16,
    Precision.BF16: torch.bfloat16,
}


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id rows to the longest one; return int64 ids and attention mask."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return input_ids, mask
