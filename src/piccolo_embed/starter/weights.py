"""The E5S1 file's tensors as a Hugging Face ``BertModel`` checkpoint: config, names, shapes, fp32 weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from piccolo_embed.starter.e5s1 import E5S1File

_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def bert_config_dict(model: E5S1File) -> dict:
    """``config.json`` for a ``BertModel`` matching the engine.

    e5.c feeds position ids ``0..L-1`` per window (no XLM-R padding offset) and token type 0, which is exactly
    what ``BertModel`` does; ``pad_token_id`` is the tokenizer's ``<pad>`` so fine-tuning leaves ``<s>`` trainable.
    """
    head = model.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": head.vocab_size,
        "hidden_size": head.hidden,
        "num_hidden_layers": head.layers,
        "num_attention_heads": head.heads,
        "intermediate_size": head.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": head.max_positions,
        "type_vocab_size": head.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": float(f"{head.eps:.6g}"),
        "position_embedding_type": "absolute",
        "pad_token_id": model.pad,
        "bos_token_id": model.bos,
        "eos_token_id": model.eos,
    }


def build_state_dict(model: E5S1File) -> dict[str, np.ndarray]:
    """Map every E5S1 tensor to its ``BertModel`` name and shape, as float32 arrays.

    The file has no pooler (e5 uses mean pooling); an identity pooler is added so loading does not report
    randomly initialised weights and ``pooler_output`` is deterministic.
    """
    head = model.header
    shapes = {
        "emb.word": (head.vocab_size, head.hidden),
        "emb.pos": (head.max_positions, head.hidden),
        "emb.type": (head.type_vocab_size, head.hidden),
    }
    state: dict[str, np.ndarray] = {}
    for name, hf_name in _EMBEDDING_NAMES.items():
        state[hf_name] = model.tensor(name).reshape(shapes.get(name, (head.hidden,)))
    linear_out = {"fi": head.ffn}
    linear_in = {"fo": head.ffn}
    for layer in range(head.layers):
        for short, hf_part in _LAYER_NAMES.items():
            prefix = f"encoder.layer.{layer}.{hf_part}"
            is_norm = short.endswith("ln")
            weight = model.tensor(f"l{layer}.{short}.w")
            if not is_norm:
                weight = weight.reshape(linear_out.get(short, head.hidden), linear_in.get(short, head.hidden))
            state[f"{prefix}.weight"] = weight
            state[f"{prefix}.bias"] = model.tensor(f"l{layer}.{short}.b")
    state["pooler.dense.weight"] = np.eye(head.hidden, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(head.hidden, dtype=np.float32)
    return state


def write_model(model: E5S1File, out: Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` (fp32) into ``out``."""
    import torch
    from safetensors.torch import save_file

    state = {name: torch.from_numpy(np.ascontiguousarray(arr)) for name, arr in build_state_dict(model).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(bert_config_dict(model), indent=2) + "\n", encoding="utf-8")
