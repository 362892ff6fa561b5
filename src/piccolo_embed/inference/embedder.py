"""The user-facing encoder: role-aware, length-sorted, token-budgeted batch inference."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import torch
from tqdm.auto import tqdm

from piccolo_embed.defaults import BATCH_SIZE, MAX_BATCH_TOKENS
from piccolo_embed.inference.batching import plan_batches
from piccolo_embed.inference.runners import BatchRunner, TorchRunner, pad_batch
from piccolo_embed.inference.unpadded import UnpaddedRunner, unpadded_unsupported
from piccolo_embed.inference.validation import validate_texts
from piccolo_embed.modeling.loading import load_sentence_transformer, resolve_model_dir, resolve_roles
from piccolo_embed.modeling.roles_io import save_role_specs
from piccolo_embed.types import Device, Engine, Precision, Role, RolePreset, RoleSpecs

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

PROGRESS_THRESHOLD = 256


class Embedder:
    """Encode texts into L2-normalised vectors with per-role instructions and max lengths.

    Wraps a ``SentenceTransformer`` (so any saved pooling is honoured) but does its own tokenisation and
    batching: every role has its own prefix and truncation length, texts are tokenised once, sorted by
    length and grouped under a token budget, so padding never exceeds a batch's own longest text.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        roles: RoleSpecs,
        *,
        precision: Precision | str = Precision.AUTO,
        batch_size: int = BATCH_SIZE,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        name: str = "",
        runner: BatchRunner | None = None,
    ) -> None:
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be positive")
        self.model = model.eval()
        self.roles = dict(roles)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.name = name
        self.runner: BatchRunner = runner or _default_runner(self.model, Precision.parse(precision))

    @classmethod
    def from_pretrained(
        cls,
        spec: str | Path,
        *,
        roles: RoleSpecs | RolePreset | str | None = None,
        device: Device | str = Device.AUTO,
        engine: Engine | str = Engine.TORCH,
        precision: Precision | str = Precision.AUTO,
        batch_size: int = BATCH_SIZE,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        runner: BatchRunner | None = None,
    ) -> Self:
        """Load a local directory (HF or sentence-transformers layout), a hub id, or ``"starter"``.

        Args:
            spec: Where the model is.
            roles: Override the model's role settings (a :class:`RolePreset` name or explicit specs).
            device: ``auto``, ``cpu`` or ``cuda``.
            engine: What runs the forward pass (:class:`Engine`); the ONNX engines run on CPU and need
                ``piccolo-embed export --model SPEC`` (``--quantize int8`` for ``onnx-int8``) first.
            precision: For engine ``torch``, as :meth:`Precision.resolve` decides on the device: autocast on
                CUDA; on CPU fp32, or bf16 weights on CPUs with AMX (see :mod:`piccolo_embed.inference.cpu_bf16`).
            batch_size: Most texts per forward pass.
            max_batch_tokens: Most padded tokens per forward pass.
            runner: A runner already built for this model (e.g. by
                :func:`~piccolo_embed.inference.onnx_runner.onnx_runner` with options of its own); it replaces
                the one ``engine`` would build.
        """
        engine = Engine.parse(engine)
        torch_precision = engine.precision(Precision.parse(precision))
        model_dir = resolve_model_dir(spec)
        if engine.onnx:
            if Device.parse(device) is Device.CUDA:
                raise ValueError(f"engine {engine.value} runs on CPU only; use engine torch on CUDA")
            device = Device.CPU
            if runner is None:  # before the model loads, so that a missing export fails fast
                from piccolo_embed.inference.onnx_runner import onnx_runner

                runner = onnx_runner(model_dir, quantized=engine is Engine.ONNX_INT8)
        model = load_sentence_transformer(model_dir, device=_resolve_device(Device.parse(device)))
        preset = RolePreset.parse(roles) if isinstance(roles, str) else roles
        return cls(
            model,
            resolve_roles(model_dir, model, preset),
            precision=torch_precision,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            name=str(spec),
            runner=runner,
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write sentence-transformers layout (with role prompts) plus ``piccolo_embed.json``."""
        directory = Path(directory)
        self.model.prompts = {
            "query": self.roles[Role.QUERY].prefix,
            "passage": self.roles[Role.PASSAGE].prefix,
        }
        self.model.save_pretrained(str(directory))
        save_role_specs(directory, self.roles)
        return directory

    @property
    def device(self) -> torch.device:
        """Device the model's weights live on."""
        return self.model.device

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.model.get_embedding_dimension())

    @property
    def tokenizer(self):
        """The model's tokenizer."""
        return self.model.tokenizer

    def tokenize(self, texts: Sequence[str], role: Role | str | None = None) -> list[list[int]]:
        """Token ids with the role's prefix and truncation at the role's max length (special tokens included)."""
        return self._token_ids(texts, role, truncate=True)

    def count_tokens(self, texts: Sequence[str], role: Role | str | None = None, *, truncate: bool = True) -> list[int]:
        """Tokens per text as the model sees them: role prefix and special tokens included.

        With ``truncate=False`` the count is what the text would need, past the role's max length (what a server
        reports before refusing an over-long input); no warning is logged for such texts.
        """
        return [len(ids) for ids in self._token_ids(texts, role, truncate=truncate)]

    def _token_ids(self, texts: Sequence[str], role: Role | str | None, *, truncate: bool) -> list[list[int]]:
        spec = self.roles[Role.coerce(role)]
        texts = validate_texts(texts)
        if not texts:
            return []
        # Untruncated: no "sequence longer than the model" warning, since finding those texts is the point.
        limit = (
            {"truncation": True, "max_length": spec.max_length} if truncate else {"truncation": False, "verbose": False}
        )
        encoded = self.tokenizer(
            [spec.prefix + text for text in texts],
            add_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            **limit,
        )
        return encoded["input_ids"]

    def encode(
        self,
        texts: Sequence[str],
        role: Role | str | None = None,
        *,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` for ``role`` (``None``: no instruction).

        Returns:
            float32 array of shape ``(len(texts), dim)``, rows in input order, each of unit L2 norm.
        """
        ids = self.tokenize(texts, role)
        return self.encode_ids(
            ids, batch_size=batch_size, max_batch_tokens=max_batch_tokens, show_progress=show_progress
        )

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed texts already tokenized by :meth:`tokenize` (so role prefix and truncation are applied).

        The server tokenizes each request once on arrival (it needs the lengths to plan batches) and
        hands the ids here, rather than paying for a second tokenizer call per forward pass.

        Returns:
            float32 array of shape ``(len(ids), dim)``, rows in input order, each of unit L2 norm.
        """
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        batches = plan_batches(
            [len(row) for row in ids],
            max_batch_size=batch_size or self.batch_size,
            max_batch_tokens=max_batch_tokens or self.max_batch_tokens,
        )
        show = len(ids) > PROGRESS_THRESHOLD if show_progress is None else show_progress
        with tqdm(total=len(ids), disable=not show, desc="encode", unit="text") as bar:
            for batch, vectors in zip(batches, self._forward_batches(ids, batches), strict=True):
                out[batch] = vectors
                bar.update(len(batch))
        return out

    def encode_queries(self, texts: Sequence[str], **kwargs: object) -> np.ndarray:
        """:meth:`encode` with the query role."""
        return self.encode(texts, Role.QUERY, **kwargs)

    def encode_passages(self, texts: Sequence[str], **kwargs: object) -> np.ndarray:
        """:meth:`encode` with the passage role."""
        return self.encode(texts, Role.PASSAGE, **kwargs)

    def _forward_batches(self, ids: Sequence[Sequence[int]], batches: list[list[int]]) -> Iterator[np.ndarray]:
        pad_id = self.tokenizer.pad_token_id or 0
        for batch in batches:
            yield self.runner(*pad_batch([ids[i] for i in batch], pad_id))


def _default_runner(model: SentenceTransformer, precision: Precision) -> BatchRunner:
    """The fastest exact runner for the precision :meth:`Precision.resolve` picks on the model's device.

    CUDA: the padded runner under autocast. CPU: bf16 weights (AMX) for bf16, else the padding-free fp32 runner
    where the architecture allows it, else the padded one.
    """
    device = model.device.type
    resolved = precision.resolve(device)  # refuses fp16 on CPU and bf16 without AMX, with a clear message
    if device == "cuda":
        return TorchRunner(model, resolved)
    if resolved is Precision.BF16:
        from piccolo_embed.inference.cpu_bf16 import CpuBf16Runner

        return CpuBf16Runner(model)
    if (reason := unpadded_unsupported(model)) is None:
        return UnpaddedRunner(model)
    log.debug("padded torch runner: %s", reason)
    return TorchRunner(model)


def _resolve_device(device: Device) -> str:
    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.CUDA and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    return device.value
