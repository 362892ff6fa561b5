"""Vocabulary trimming: keep the tokens a corpus uses (plus special tokens), shrink the embedding matrix to match.

multilingual-e5-small spends 96M of its 118M parameters on a 250k-row embedding matrix; a Chinese corpus uses a
few percent of the rows. Dropping the rest makes CPU training several times faster (AdamW updates every row
of a dense embedding gradient) and the model smaller, while every text the corpus covers embeds exactly as before.

Why segmentation cannot change for covered texts:
    * **WordPiece** (BERT) is greedy longest-match-first. At each step the original longest match is kept (it
      appears in the output), and no longer candidate exists in a subset of the vocabulary, so every step picks
      the same piece. A word that fails to segment becomes ``[UNK]`` either way.
    * **Unigram** (XLM-R, e5) picks the best-scoring segmentation by Viterbi. Trimming keeps scores and only
      removes pieces, so every path of the trimmed lattice was a path of the original with the same score; the
      original best path uses only kept pieces, so it is still there and still best. Tie-breaking depends on
      positions and lengths, not ids. One subtlety: the score of an unknown character is derived from the lowest
      piece score in the vocabulary, so the lowest-scoring piece is always kept, which leaves that unchanged.
Ids are remapped in ascending order of the old id; specials stay in the vocabulary. After writing, the trimmed
tokenizer is checked on the whole corpus against the remapped original ids, so any mismatch fails loudly.

Trimming is a training-speed trick, not a way to ship models: the trimmed directory records which base rows it
kept and the identity of the model and texts it was trimmed from (``vocab_trim.json``, see :func:`trim_matches`),
and :func:`restore_vocabulary` writes a trained model's rows back into the base's full
embedding matrix and restores the base tokenizer, so the saved model embeds any text the base could.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from piccolo_embed.modeling.identity import model_fingerprint, texts_fingerprint

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
TRIM_MAP = "vocab_trim.json"
_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
_SKIPPED = (".safetensors", ".bin", ".model", ".pt")
_RUN_FILES = ("config.json", TRIM_MAP, "log.jsonl", "train_config.json", "best.json")  # rewritten, or not the model's
_BATCH = 1024
# Tensors indexed by token id: input embeddings, and the output embeddings/bias of a kept language-model head.
_VOCAB_TENSORS = ("word_embeddings.weight", "embed_tokens.weight", "decoder.weight", "predictions.bias")


@dataclass(frozen=True)
class TrimReport:
    """What trimming did."""

    old_vocab: int
    new_vocab: int
    texts: int
    texts_with_unk: int

    def __str__(self) -> str:
        return (
            f"vocabulary {self.old_vocab} -> {self.new_vocab} tokens from {self.texts} texts "
            f"({self.texts_with_unk} contain unknown tokens)"
        )


def trim_vocabulary(model_dir: str | Path, texts: Iterable[str], output_dir: str | Path) -> TrimReport:
    """Write a copy of ``model_dir`` to ``output_dir`` that only knows the tokens ``texts`` use.

    ``model_dir`` may be a Hugging Face checkpoint or a sentence-transformers directory whose transformer sits at
    its root; other files (pooling, role settings) are copied unchanged.

    Raises:
        ValueError: The tokenizer is not a fast WordPiece or Unigram tokenizer.
        RuntimeError: The trimmed tokenizer does not reproduce the original ids (should not happen).
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    texts = list(texts)
    encoded = _encode(tokenizer, texts)
    kept = _kept_ids(spec, tokenizer, encoded)
    new_id = {old: new for new, old in enumerate(kept)}
    _copy_other_files(model_dir, output_dir)
    _write_tokenizer(model_dir, output_dir, spec, kept, new_id)
    _write_model(model_dir, output_dir, kept, new_id)
    _verify(output_dir, texts, encoded, new_id)
    trim_map = _compose_trim_map(model_dir, kept, len(tokenizer))
    trim_map["source"] = {"fingerprint": model_fingerprint(model_dir), "texts_sha256": texts_fingerprint(texts)}
    (output_dir / TRIM_MAP).write_text(json.dumps(trim_map) + "\n", encoding="utf-8")
    unk = tokenizer.unk_token_id
    report = TrimReport(len(tokenizer), len(kept), len(texts), sum(unk in ids for ids in encoded))
    log.info("%s", report)
    return report


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), _BATCH):
        ids.extend(tokenizer(list(texts[start : start + _BATCH]), add_special_tokens=True)["input_ids"])
    return ids


def _kept_ids(spec: dict[str, Any], tokenizer: Any, encoded: list[list[int]]) -> list[int]:
    model = spec["model"]
    if model["type"] not in ("Unigram", "WordPiece"):
        raise ValueError(f"cannot trim a {model['type']} tokenizer; only WordPiece and Unigram are supported")
    kept = {i for ids in encoded for i in ids}
    kept.update(token["id"] for token in spec.get("added_tokens", []))
    kept.update(i for i in tokenizer.all_special_ids if i is not None)
    if model["type"] == "Unigram":
        scores = [score for _, score in model["vocab"]]
        kept.add(min(range(len(scores)), key=scores.__getitem__))  # keeps the unknown-character score unchanged
        if model.get("unk_id") is not None:
            kept.add(model["unk_id"])
    return sorted(kept)


def _copy_other_files(model_dir: Path, output_dir: Path) -> None:
    """Copy the model's other files: top-level files and the module folders ``modules.json`` lists.

    Other folders (a training run's checkpoints, its own trimmed base, logs) are not part of the model.
    """
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError("the output directory must differ from the model directory")
    output_dir.mkdir(parents=True, exist_ok=True)
    modules = model_dir / "modules.json"
    listed = json.loads(modules.read_text(encoding="utf-8")) if modules.is_file() else []
    module_dirs = {module.get("path", "") for module in listed}
    for path in model_dir.iterdir():
        if path.name in TOKENIZER_FILES or path.name in _RUN_FILES or path.suffix in _SKIPPED:
            continue
        if path.is_dir():
            if path.name in module_dirs:
                shutil.copytree(path, output_dir / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, output_dir / path.name)


def _write_tokenizer(
    model_dir: Path, output_dir: Path, spec: dict[str, Any], kept: list[int], new_id: dict[int, int]
) -> None:
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept if old < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        token_of = {index: token for token, index in model["vocab"].items()}
        model["vocab"] = {token_of[old]: new_id[old] for old in kept if old in token_of}
        vocab_lines = [token_of[old] for old in kept if old in token_of]
        if (model_dir / "vocab.txt").is_file():
            (output_dir / "vocab.txt").write_text("\n".join(vocab_lines) + "\n", encoding="utf-8")
    for token in spec.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    if spec.get("post_processor"):
        spec["post_processor"] = _remap_processor(spec["post_processor"], new_id)
    (output_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            config = json.loads((model_dir / name).read_text(encoding="utf-8"))
            if "added_tokens_decoder" in config:
                config["added_tokens_decoder"] = {
                    str(new_id[int(k)]): v for k, v in config["added_tokens_decoder"].items()
                }
            (output_dir / name).write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def _remap_processor(processor: dict[str, Any], new_id: dict[int, int]) -> dict[str, Any]:
    kind = processor.get("type")
    if kind == "Sequence":
        processor["processors"] = [_remap_processor(p, new_id) for p in processor["processors"]]
    elif kind == "TemplateProcessing":
        for special in processor.get("special_tokens", {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            token, index = processor[key]
            processor[key] = [token, new_id[index]]
    return processor


def _write_model(model_dir: Path, output_dir: Path, kept: list[int], new_id: dict[int, int]) -> None:
    """Slice the vocabulary rows out of the checkpoint's tensors; every other tensor is written back unchanged.

    Working on the state dict (rather than loading ``AutoModel``) keeps the checkpoint exactly as it was: no head
    is dropped and no missing pooler is initialised at random.
    """
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{model_dir}: trimming needs a single model.safetensors checkpoint")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    rows = int(config["vocab_size"])
    tensors = load_file(str(weights))
    index = torch.tensor(kept)
    sliced = [name for name, tensor in tensors.items() if name.endswith(_VOCAB_TENSORS) and tensor.shape[0] == rows]
    if not sliced:
        raise ValueError(f"{weights}: found no word-embedding tensor with {rows} rows")
    for name in sliced:
        tensors[name] = tensors[name][index].contiguous()
    save_file(tensors, str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    config["vocab_size"] = len(kept)
    for name in _SPECIAL_IDS:
        value = config.get(name)
        if isinstance(value, int) and value in new_id:
            config[name] = new_id[value]
    (output_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _verify(output_dir: Path, texts: Sequence[str], encoded: list[list[int]], new_id: dict[int, int]) -> None:
    trimmed = AutoTokenizer.from_pretrained(str(output_dir))
    for text, old_ids, new_ids in zip(texts, encoded, _encode(trimmed, texts), strict=True):
        if [new_id[i] for i in old_ids] != new_ids:
            raise RuntimeError(f"trimmed tokenizer segments {text[:50]!r} differently; please report this")


def _compose_trim_map(model_dir: Path, kept: list[int], vocab_size: int) -> dict[str, Any]:
    """The map from the trimmed ids to the *original* base's ids, also when ``model_dir`` was itself trimmed."""
    earlier = model_dir / TRIM_MAP
    if earlier.is_file():
        previous = json.loads(earlier.read_text(encoding="utf-8"))
        base_kept = previous["kept_ids"]
        return {**previous, "kept_ids": [base_kept[i] for i in kept]}
    return {"base_model": str(model_dir.resolve()), "base_vocab_size": vocab_size, "kept_ids": kept}


def trim_matches(trimmed_dir: Path, model_dir: Path, texts: Iterable[str]) -> bool:
    """Whether ``trimmed_dir`` was trimmed from this very ``model_dir`` (same weights and tokenizer) to ``texts``."""
    path = trimmed_dir / TRIM_MAP
    if not (trimmed_dir / "config.json").is_file() or not path.is_file():
        return False
    try:
        source = json.loads(path.read_text(encoding="utf-8")).get("source") or {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return source == {"fingerprint": model_fingerprint(model_dir), "texts_sha256": texts_fingerprint(texts)}


def read_trim_map(model_dir: str | Path) -> list[int] | None:
    """The base ids a trimmed model kept (row ``i`` of the trimmed matrix is base row ``kept[i]``), or ``None``."""
    path = Path(model_dir) / TRIM_MAP
    if not path.is_file():
        return None
    return [int(i) for i in json.loads(path.read_text(encoding="utf-8"))["kept_ids"]]


def restore_vocabulary(trained_dir: str | Path, base_dir: str | Path, kept: Sequence[int]) -> int:
    """Give a model trained on a trimmed vocabulary the base's whole vocabulary again, in place.

    Every vocabulary-indexed tensor becomes the base's tensor with the trained rows written at their base ids
    (rows the run never had keep the base values), and the base tokenizer files replace the trimmed ones, so any
    text tokenises exactly as the base tokenises it. Returns the restored vocabulary size.

    Raises:
        ValueError: The checkpoints do not match the trim (different row counts or missing tensors).
    """
    trained_dir, base_dir = Path(trained_dir), Path(base_dir)
    weights = trained_dir / "model.safetensors"
    tensors, base = load_file(str(weights)), load_file(str(base_dir / "model.safetensors"))
    index = torch.tensor(list(kept))
    restored = 0
    for name, tensor in tensors.items():
        if not (name.endswith(_VOCAB_TENSORS) and tensor.shape[0] == len(kept)):
            continue
        if name not in base or base[name].shape[1:] != tensor.shape[1:]:
            raise ValueError(f"{base_dir}: no base tensor {name!r} of shape (*, {tuple(tensor.shape[1:])})")
        full = base[name].to(tensor.dtype).clone()
        full[index] = tensor
        tensors[name] = full
        restored = full.shape[0]
    if not restored:
        raise ValueError(f"{weights}: found no vocabulary tensor with {len(kept)} rows to restore")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    _restore_tokenizer_and_config(trained_dir, base_dir, restored)
    log.info("restored the base vocabulary (%d -> %d rows) in %s", len(kept), restored, trained_dir)
    return restored


def _restore_tokenizer_and_config(trained_dir: Path, base_dir: Path, rows: int) -> None:
    for name in TOKENIZER_FILES:
        (trained_dir / name).unlink(missing_ok=True)
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, trained_dir / name)
    for path in base_dir.glob("*.model"):  # sentencepiece files, which trimming leaves out
        shutil.copy2(path, trained_dir / path.name)
    (trained_dir / TRIM_MAP).unlink(missing_ok=True)
    config = json.loads((trained_dir / "config.json").read_text(encoding="utf-8"))
    base_config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    config["vocab_size"] = rows
    for name in _SPECIAL_IDS:
        if name in base_config:
            config[name] = base_config[name]
    (trained_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
