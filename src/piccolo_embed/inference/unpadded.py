"""Padding-free CPU forward for BERT and XLM-R encoders: linear layers see only real tokens.

Why our own forward: in a padded batch every linear layer (Q/K/V, attention output, both feed-forward
matmuls: over 90% of the FLOPs for texts shorter than 0.6 x the hidden size, 230 tokens for the starter) also
runs on the pad positions. Offline
``encode`` keeps that waste small by sorting all its input by length, but a server batches whatever requests
are in flight, and there padding cost about a quarter of the model's time (``docs/performance.md``). Hugging Face
only skips padding with FlashAttention-2 on CUDA (sentence-transformers' ``cu_seq_lens`` path), so on CPU
this module re-runs the encoder's own modules on a flat ``(tokens, hidden)`` tensor and pads only around
scaled-dot-product attention, whose cost grows with the longest text but is small next to the linears.

Shape names in the comments: ``B`` texts in the batch, ``W`` the padded width, ``T`` the tokens the linear
layers see (the real tokens when packed, ``B * W`` when padded), ``H`` hidden size, ``h`` heads, ``d = H / h``.

The weights are the model's own parameters, read on every call (no copies), so a model that is trained
further stays in sync. Anything this forward does not reproduce exactly (other architectures, relative
positions, pooling other than mean or CLS) is refused by :func:`unpadded_unsupported`, and the
:class:`~piccolo_embed.inference.embedder.Embedder` then uses the plain padded runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
_COUNT_FROM_PADDING = ("roberta", "xlm-roberta")  # their position ids start at padding_idx + 1
_POOLING = ("mean", "cls")
# Pack a batch when its padded size exceeds its real tokens by more than this: below ~10% padding the
# scatter and gather around attention (about 6% of a forward on long texts) cost more than they save.
PACK_ABOVE = 1.1
ATTENTION_BLOCK = 16


def unpadded_unsupported(model: SentenceTransformer) -> str | None:
    """Why :class:`UnpaddedRunner` cannot run ``model`` exactly, or ``None`` when it can."""
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    if model.device.type != "cpu":
        return f"the model is on {model.device}, not the CPU"
    if len(model) < 2 or not isinstance(model[0], Transformer) or not isinstance(model[1], Pooling):
        return "the model does not start with a Transformer and a Pooling module"
    if _pooling_mode(model[1]) not in _POOLING:
        return f"pooling {model[1].pooling_mode!r} is not one of {_POOLING}"
    return _config_unsupported(model[0].auto_model.config)


def _pooling_mode(pooling: torch.nn.Module) -> str:
    """The pooling's single mode as a string (sentence-transformers accepts one mode or a tuple of them)."""
    mode = pooling.pooling_mode
    if isinstance(mode, tuple | list):
        return str(mode[0]) if len(mode) == 1 else repr(mode)
    return str(mode)


def _config_unsupported(config: object) -> str | None:
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPES:
        return f"model type {model_type!r} is not one of {_MODEL_TYPES}"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position embedding type {config.position_embedding_type!r} is not absolute"
    if getattr(config, "is_decoder", False):
        return "the model is a decoder"
    return None


def attention_width(width: int) -> int:
    """The width a packed batch's attention runs at: ``width``, or rounded up to a multiple of 16 if faster.

    Why: on CPU, ``scaled_dot_product_attention`` over short texts is several times slower at widths that are
    not multiples of 16 (the AVX-512 float vector), except just past one, where rounding up costs more than it
    saves (timings in ``docs/performance.md``). The added columns are masked, so the vectors do not change.
    """
    rounded = -(-width // ATTENTION_BLOCK) * ATTENTION_BLOCK
    return rounded if width <= ATTENTION_BLOCK or rounded - width <= ATTENTION_BLOCK // 2 else width


@dataclass(frozen=True)
class _Layout:
    """How one batch runs: packed (linear layers on the real tokens only) or padded, and its attention mask."""

    rows: int
    width: int
    tokens: torch.Tensor | None  # packed: indices of the real tokens in the padded order; None: run padded
    attn_mask: torch.Tensor | None  # None when no text is padded

    @classmethod
    def choose(cls, ids: torch.Tensor, mask: torch.Tensor) -> tuple[_Layout, torch.Tensor, torch.Tensor]:
        """Pack when padding is worth more than scattering Q/K/V and gathering the context every layer.

        Returns:
            The layout, and ids and mask widened to the layout's width (a packed batch may be widened).
        """
        rows, width = mask.shape
        if rows * width > PACK_ABOVE * int(mask.sum()):
            extra = attention_width(width) - width
            ids, mask = functional.pad(ids, (0, extra)), functional.pad(mask, (0, extra))
            real = mask.reshape(-1).nonzero().squeeze(1)
            return cls(rows, width + extra, real, mask[:, None, None, :]), ids, mask
        return cls(rows, width, None, None if bool(mask.all()) else mask[:, None, None, :]), ids, mask


class UnpaddedRunner:
    """A :class:`~piccolo_embed.inference.runners.BatchRunner` that skips pad tokens in every linear layer.

    Args:
        model: A sentence-transformers model that :func:`unpadded_unsupported` accepts. Modules after the
            pooling (``Dense``, ``Normalize``) run unchanged on the pooled vectors.

    Raises:
        ValueError: The model is not supported (the message says why).
    """

    def __init__(self, model: SentenceTransformer) -> None:
        if reason := unpadded_unsupported(model):
            raise ValueError(f"UnpaddedRunner cannot run this model: {reason}")
        self.model = model
        self.encoder = model[0].auto_model
        self.pooling = _pooling_mode(model[1])
        self.head = list(model)[2:]
        config = self.encoder.config
        self.first_position = config.pad_token_id + 1 if config.model_type in _COUNT_FROM_PADDING else 0
        self.heads = config.num_attention_heads

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Embed one padded batch: int64 ``(rows, width)`` ids and mask in, float32 ``(rows, dim)`` out."""
        ids = torch.from_numpy(input_ids)
        mask = torch.from_numpy(attention_mask).bool()
        with torch.inference_mode():
            layout, ids, mask = _Layout.choose(ids, mask)
            hidden = self._embed(ids, layout.tokens)
            scratch = (
                None if layout.tokens is None else hidden.new_zeros(layout.rows * layout.width, 3 * hidden.shape[1])
            )
            for layer in self.encoder.encoder.layer:
                hidden = self._layer(layer, hidden, layout, scratch)
            if layout.tokens is None:  # back to the real tokens, in order, for pooling
                hidden = hidden.index_select(0, mask.reshape(-1).nonzero().squeeze(1))
            features = {"sentence_embedding": self._pool(hidden.float(), mask)}  # bf16 weights pool in fp32
            for module in self.head:
                features = module(features)
        return features["sentence_embedding"].float().numpy()

    def _embed(self, ids: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """Word + absolute position + token-type-0 embeddings, layer-normalised (real tokens only if packed)."""
        embeddings = self.encoder.embeddings
        rows, width = ids.shape  # (B, W)
        positions = torch.arange(self.first_position, self.first_position + width).repeat(rows)  # (B*W,)
        ids = ids.reshape(-1)  # (B*W,)
        if tokens is not None:
            ids, positions = ids[tokens], positions[tokens]  # (T,) each
        hidden = embeddings.word_embeddings(ids) + embeddings.position_embeddings(positions)  # (T, H)
        hidden = hidden + embeddings.token_type_embeddings.weight[0]  # (T, H) + (H,)
        return embeddings.LayerNorm(hidden)  # (T, H)

    def _layer(
        self, layer: torch.nn.Module, hidden: torch.Tensor, layout: _Layout, scratch: torch.Tensor | None
    ) -> torch.Tensor:
        """One post-LayerNorm transformer layer on flat ``(tokens, hidden)`` states."""
        attention = layer.attention
        projections = [  # 3 x (T, H): Q, K, V
            functional.linear(hidden, p.weight, p.bias)
            for p in (attention.self.query, attention.self.key, attention.self.value)
        ]
        context = self._attend(torch.cat(projections, dim=1), layout, scratch)  # (T, 3H) -> (T, H)
        hidden = attention.output.LayerNorm(attention.output.dense(context) + hidden)  # (T, H)
        inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))  # (T, intermediate)
        return layer.output.LayerNorm(layer.output.dense(inner) + hidden)  # (T, H)

    def _attend(self, qkv: torch.Tensor, layout: _Layout, scratch: torch.Tensor | None) -> torch.Tensor:
        """Masked SDPA in the padded layout; packed Q/K/V are scattered into it and the real rows gathered back.

        A packed pass scatters every layer into the same zeroed ``scratch``: the pad rows are the same in all
        layers and never written, so they stay zero (masked keys, but a NaN of uninitialised memory would
        still leak through the softmax). Zeroing once per pass rather than per layer is a small saving with the
        same vectors (``docs/performance.md``).
        """
        size = qkv.shape[1] // 3  # H; qkv is (T, 3H)
        if scratch is not None:  # packed: real rows into the zeroed padded layout
            qkv = scratch.index_copy_(0, layout.tokens, qkv)  # (B*W, 3H)
        qkv = qkv.view(layout.rows, layout.width, 3, self.heads, size // self.heads)  # (B, W, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, h, W, d)
        context = functional.scaled_dot_product_attention(q, k, v, attn_mask=layout.attn_mask)  # (B, h, W, d)
        context = context.transpose(1, 2).reshape(layout.rows * layout.width, size)  # (B*W, H)
        return context if layout.tokens is None else context.index_select(0, layout.tokens)  # (T, H)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over each text's tokens, or its first token (CLS), from the flat hidden states."""
        lengths = mask.sum(dim=1)  # (B,) real tokens per text; hidden is (sum(lengths), H)
        starts = torch.cumsum(lengths, dim=0) - lengths  # (B,) row of each text's first token
        if self.pooling == "cls":
            return hidden.index_select(0, starts)  # (B, H)
        segment = torch.repeat_interleave(torch.arange(mask.shape[0]), lengths)  # (sum(lengths),) text of each row
        sums = hidden.new_zeros(mask.shape[0], hidden.shape[1]).index_add_(0, segment, hidden)  # (B, H)
        return sums / lengths.clamp(min=1).unsqueeze(1).to(hidden.dtype)  # (B, H)
