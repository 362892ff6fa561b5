"""Model merging: a weighted average of same-architecture checkpoints (model soups, LM-Cocktail).

LM-Cocktail (FlagEmbedding) averages a fine-tuned embedder with its base model to win back general ability that
fine-tuning traded away; model soups average several fine-tuned runs. Neither sentence-transformers nor
transformers ships a merge, and FlagEmbedding's loads every model whole into memory, so this is a small streaming
version: tensors are read one at a time from safetensors, averaged in float64 and stored in the first model's dtype.

The output is the first model's directory (tokenizer, configs, sentence-transformers modules, role settings)
with averaged weights, written to a temporary sibling directory and renamed into place. Everything that could
make an average meaningless is checked before any tensor is read: architecture (the transformer's config),
module configs (pooling), vocabulary, weight files, tensor names, shapes and dtypes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from piccolo_embed.errors import MergeError

log = logging.getLogger(__name__)

MERGE_FILE = "piccolo_merge.json"
FORMAT_VERSION = 1
# Config fields that must agree for two checkpoints to share an architecture.
ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
    "position_embedding_type",
    "hidden_act",
)
# Weights of the first model that must not be copied: they are replaced by the average, or would be stale.
_STALE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
_STALE_NAMES = ("onnx", ".piccolo-starter-complete.json")
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Model:
    """One input: the spec as the user gave it, and its resolved directory."""

    spec: str
    path: Path


@dataclass(frozen=True)
class MergeReport:
    """What a merge wrote."""

    output_dir: Path
    models: tuple[Model, ...]
    weights: tuple[float, ...]
    weight_files: tuple[str, ...]
    tensors: int
    parameters: int

    def __str__(self) -> str:
        parts = ", ".join(f"{w:.4g} x {m.spec}" for m, w in zip(self.models, self.weights, strict=True))
        return (
            f"merged {parts} -> {self.output_dir} "
            f"({self.tensors} tensors, {self.parameters / 1e6:.2f}M averaged parameters, "
            f"{len(self.weight_files)} weight file(s))"
        )


def normalise_weights(weights: Sequence[float] | None, n_models: int) -> tuple[float, ...]:
    """Check ``weights`` (finite, >= 0, one per model, not all zero) and scale them to sum to 1; ``None``: equal.

    Raises:
        MergeError: A weight is invalid, or the count does not match the models.
    """
    if n_models < 2:
        raise MergeError(f"merging needs at least two models, got {n_models}")
    if weights is None:
        return tuple(1.0 / n_models for _ in range(n_models))
    if len(weights) != n_models:
        raise MergeError(f"got {len(weights)} weights for {n_models} models; give one weight per model")
    for index, weight in enumerate(weights, 1):
        if not math.isfinite(weight) or weight < 0:
            raise MergeError(f"weight {index} is {weight}; weights must be finite and >= 0")
    total = math.fsum(weights)
    if total <= 0:
        raise MergeError("all weights are zero; at least one model needs a positive weight")
    return tuple(float(w) / total for w in weights)


def merge_models(
    models: Sequence[str | Path],
    output_dir: str | Path,
    *,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
) -> MergeReport:
    """Write the weighted average of ``models`` to ``output_dir`` as a complete copy of the first model.

    Args:
        models: Anything :func:`~piccolo_embed.modeling.loading.resolve_model_dir` accepts (local directories in
            sentence-transformers or Hugging Face layout, ``starter``, hub ids).
        output_dir: Directory to create; must not be one of the models, nor contain or lie inside one.
        weights: One finite weight >= 0 per model, normalised to sum to 1; ``None`` averages equally.
        overwrite: Replace an existing non-empty ``output_dir``.

    Raises:
        MergeError: Bad weights or output, or the models differ in architecture, vocabulary or tensors.
    """
    from piccolo_embed.modeling.loading import resolve_model_dir

    normalised = normalise_weights(weights, len(models))
    inputs = tuple(Model(str(spec), resolve_model_dir(spec).resolve()) for spec in models)
    output = Path(output_dir).expanduser().resolve()
    _check_output(output, inputs, overwrite=overwrite)
    _check_configs(inputs)
    _check_vocabularies(inputs)
    files = _check_tensors(inputs)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.merge-tmp-", dir=output.parent))
    try:
        shutil.copytree(inputs[0].path, tmp, dirs_exist_ok=True, ignore=_ignore_stale, symlinks=False)
        tensors, parameters = 0, 0
        for name in files:
            counts = _average_file(inputs, normalised, name, tmp / name)
            tensors, parameters = tensors + counts[0], parameters + counts[1]
        report = MergeReport(output, inputs, normalised, files, tensors, parameters)
        _write_record(tmp, report, weights)
        _publish(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.debug("%s", report)
    return report


def _check_output(output: Path, inputs: Sequence[Model], *, overwrite: bool) -> None:
    for model in inputs:
        if output == model.path or model.path in output.parents or output in model.path.parents:
            raise MergeError(f"output {output} must not be, contain or lie inside an input model ({model.spec})")
    if output.exists() and not output.is_dir():
        raise MergeError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise MergeError(f"output {output} exists and is not empty; pass --overwrite to replace it")


def _label(index: int, model: Model) -> str:
    return f"model {index + 1} ({model.spec})"


def _mismatch(index: int, inputs: Sequence[Model], what: str, theirs: Any, ours: Any) -> MergeError:
    return MergeError(
        f"cannot merge {_label(index, inputs[index])}: {what} is {theirs!r}, {_label(0, inputs[0])} has {ours!r}"
    )


def _transformer_dir(model: Model) -> Path:
    """The Hugging Face checkpoint inside ``model``: the root, or the Transformer module's path in modules.json."""
    modules_file = model.path / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        for module in modules:
            if str(module.get("type", "")).endswith("Transformer"):
                return model.path / module.get("path", "")
    return model.path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise MergeError(f"{path}: cannot read ({err})") from err


def _check_configs(inputs: Sequence[Model]) -> None:
    """Same transformer architecture; same modules and module configs (pooling) where both models declare them."""
    first_dir = _transformer_dir(inputs[0])
    first = _read_json(first_dir / "config.json")
    first_modules = _module_configs(inputs[0])
    for index, model in enumerate(inputs[1:], 1):
        config = _read_json(_transformer_dir(model) / "config.json")
        for key in ARCH_KEYS:
            if config.get(key) != first.get(key):
                raise _mismatch(index, inputs, f"config.json {key}", config.get(key), first.get(key))
        modules = _module_configs(model)
        for name in sorted(first_modules.keys() & modules.keys()):
            theirs, ours = modules[name], first_modules[name]
            for key in sorted(theirs.keys() | ours.keys()):
                if theirs.get(key) != ours.get(key):
                    raise _mismatch(index, inputs, f"{name} {key}", theirs.get(key), ours.get(key))


def _module_configs(model: Model) -> dict[str, dict[str, Any]]:
    """modules.json (as ``{index: type}``) and every sentence-transformers module's own config.json."""
    modules_file = model.path / "modules.json"
    if not modules_file.is_file():
        return {}
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    configs = {"modules.json": {str(m.get("idx", i)): m.get("type") for i, m in enumerate(modules)}}
    for module in modules:
        path = model.path / module.get("path", "") / "config.json"
        if module.get("path") and path.is_file():
            configs[f"{module['path']}/config.json"] = _read_json(path)
    return configs


def _check_vocabularies(inputs: Sequence[Model]) -> None:
    """The tokenizers must map every token to the same id, or averaged embedding rows would mix tokens."""
    first = _vocabulary(inputs[0])
    for index, model in enumerate(inputs[1:], 1):
        vocab = _vocabulary(model)
        if vocab == first:
            continue
        for token_id in range(max(len(vocab), len(first))):
            theirs = vocab[token_id] if token_id < len(vocab) else None
            ours = first[token_id] if token_id < len(first) else None
            if theirs != ours:
                raise _mismatch(index, inputs, f"vocabulary token id {token_id}", theirs, ours)


def _vocabulary(model: Model) -> list[str | None]:
    """Tokens by id (``None`` for an id no token maps to)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(_transformer_dir(model)), local_files_only=True)
    except (OSError, ValueError) as err:
        raise MergeError(f"cannot merge {model.spec}: its tokenizer does not load ({err})") from err
    vocab = tokenizer.get_vocab()
    tokens: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for token, token_id in vocab.items():
        tokens[token_id] = token
    return tokens


def _weight_files(model: Model) -> list[str]:
    """Safetensors files under ``model`` (shards included), as sorted relative paths; exports are skipped."""
    found = [p for p in model.path.rglob("*.safetensors") if "onnx" not in p.relative_to(model.path).parts]
    return sorted(p.relative_to(model.path).as_posix() for p in found)


def _headers(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype, shape), read from the file header without loading tensors."""
    with safe_open(str(path), framework="pt") as handle:
        slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
        return {key: (part.get_dtype(), tuple(part.get_shape())) for key, part in slices.items()}


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))


def _check_tensors(inputs: Sequence[Model]) -> tuple[str, ...]:
    """Same weight files, tensor names, shapes and kinds (floating or not) in every model; returns the files."""
    files = _weight_files(inputs[0])
    if not files:
        others = sorted(p.name for p in inputs[0].path.glob("*.bin"))
        hint = f" (only {', '.join(others)}; re-save it with safetensors)" if others else ""
        raise MergeError(f"cannot merge {_label(0, inputs[0])}: no .safetensors weights{hint}")
    for index, model in enumerate(inputs[1:], 1):
        theirs = _weight_files(model)
        if theirs != files:
            raise _mismatch(index, inputs, "the list of weight files (shards must match)", theirs, files)
    for name in files:
        first = _headers(inputs[0].path / name)
        for index, model in enumerate(inputs[1:], 1):
            _compare_headers(index, inputs, name, _headers(model.path / name), first)
    return tuple(files)


def _compare_headers(index: int, inputs: Sequence[Model], name: str, theirs: dict, ours: dict) -> None:
    for key in sorted(theirs.keys() | ours.keys()):
        if key not in theirs or key not in ours:
            where = "has" if key in theirs else "lacks"
            raise MergeError(
                f"cannot merge {_label(index, inputs[index])}: {name} {where} tensor {key!r}, "
                f"unlike {_label(0, inputs[0])}"
            )
        (their_dtype, their_shape), (our_dtype, our_shape) = theirs[key], ours[key]
        if their_shape != our_shape:
            raise _mismatch(index, inputs, f"{name} tensor {key!r} shape", list(their_shape), list(our_shape))
        if _is_float(their_dtype) != _is_float(our_dtype) or (not _is_float(our_dtype) and their_dtype != our_dtype):
            raise _mismatch(index, inputs, f"{name} tensor {key!r} dtype", their_dtype, our_dtype)


def _average_file(inputs: Sequence[Model], weights: Sequence[float], name: str, target: Path) -> tuple[int, int]:
    """Average one weight file into ``target``; returns (tensors, averaged parameters)."""
    merged: dict[str, torch.Tensor] = {}
    parameters = 0
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(m.path / name), framework="pt")) for m in inputs]
        metadata = handles[0].metadata()
        for key in handles[0].keys():  # noqa: SIM118 (safe_open is not iterable)
            first = handles[0].get_tensor(key)
            if first.is_floating_point():
                merged[key] = _average_tensor(handles, weights, key, first)
                parameters += first.numel()
                continue
            for index, handle in enumerate(handles[1:], 1):
                if not torch.equal(handle.get_tensor(key), first):
                    raise MergeError(
                        f"cannot merge {_label(index, inputs[index])}: {name} tensor {key!r} "
                        f"({first.dtype}, not averaged) differs from {_label(0, inputs[0])}'s"
                    )
            merged[key] = first
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(target), metadata=metadata)
    shutil.copymode(inputs[0].path / name, target)  # save_file creates 0600; keep the first model's permissions
    return len(merged), parameters


def _average_tensor(handles: Sequence[Any], weights: Sequence[float], key: str, first: torch.Tensor) -> torch.Tensor:
    """Weighted sum in float64, cast to the first model's dtype; zero-weight models are not read.

    Large tensors (a 250k-token embedding matrix) are summed in row blocks, so float64 never holds a whole one.
    """
    if first.dim() == 0 or first.numel() <= _BLOCK_ELEMENTS:
        blocks = [slice(None)]
    else:
        step = max(1, _BLOCK_ELEMENTS // first[0].numel())
        blocks = [slice(start, start + step) for start in range(0, first.shape[0], step)]
    merged = torch.empty_like(first)
    for block in blocks:
        total = torch.zeros_like(first[block], dtype=torch.float64)
        for weight, handle in zip(weights, handles, strict=True):
            if weight > 0:
                part = handle.get_tensor(key) if len(blocks) == 1 else handle.get_slice(key)[block]
                total.add_(part.to(torch.float64), alpha=weight)
        merged[block] = total.to(first.dtype)
    return merged


def _ignore_stale(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _STALE_NAMES or n.endswith(_STALE_SUFFIXES)}


def _write_record(directory: Path, report: MergeReport, given: Sequence[float] | None) -> None:
    """Provenance: which models, with which weights, made this one."""
    payload = {
        "format_version": FORMAT_VERSION,
        "models": [
            {"spec": m.spec, "path": str(m.path), "weight": w}
            for m, w in zip(report.models, report.weights, strict=True)
        ],
        "weights_given": None if given is None else [float(w) for w in given],
    }
    (directory / MERGE_FILE).write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _publish(tmp: Path, output: Path) -> None:
    """Rename ``tmp`` to ``output``; an existing output is moved aside first and removed only afterwards."""
    aside = None
    if output.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        output.rename(aside / output.name)
    tmp.rename(output)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
