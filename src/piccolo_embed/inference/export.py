"""Export a model's whole embedding pipeline to ONNX (fp32, optionally int8) next to the model.

The graph holds the transformer *and* the sentence-transformers head the model declares (pooling,
normalisation), so ONNX Runtime returns the same L2-normalised vectors as the torch path and no pooling
code is duplicated in numpy. For BERT-family models the graph is then fused by ONNX Runtime's transformer
optimiser (one ``Attention`` op per layer, ``BiasGelu``, ``EmbedLayerNormalization``), which is what makes
int8 worth having: dynamic int8 quantisation of the fused graph quantises the QKV projection too.

Residual-add + LayerNorm is deliberately *not* fused into ``SkipLayerNormalization``: on our CPUs that kernel
took 11 ms where ``Add`` + ``LayerNormalization`` took 4 ms (5440 x 384, one thread), and leaving it unfused
made the int8 graph 15% and the fp32 graph 7% faster with the same outputs. ONNX Runtime would re-fuse it
at session start, so :class:`~piccolo_embed.inference.onnx_runner.OnnxRunner` disables that fusion too
(:data:`DISABLED_SESSION_FUSIONS`).

Layout written under ``MODEL_DIR/onnx/`` (or another directory of the caller's choosing)::

    model.onnx          fp32 graph, inputs input_ids/attention_mask (int64, batch x sequence)
    model_int8.onnx     dynamic int8 weights (optional)
    export.json         what was exported, from which weights, with which versions
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from piccolo_embed import __version__
from piccolo_embed.types import Quantization

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

ONNX_SUBDIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
MANIFEST_FILE = "export.json"
OUTPUT_NAME = "sentence_embedding"
INPUT_NAMES = ("input_ids", "attention_mask")
OPSET = 17
FORMAT_VERSION = 2  # 2: residual + LayerNorm left unfused
# Architectures whose graphs ONNX Runtime's "bert" optimiser fuses (XLM-R and RoBERTa are BERT layers).
FUSABLE_MODEL_TYPES = frozenset({"bert", "xlm-roberta", "roberta"})
# Dynamic int8: weights signed int8 per output channel, activations uint8 per tensor, computed at run time.
# Per-channel weights lift the starter's mean cosine to fp32 above the 0.99 bar that per-tensor misses.
INT8_SETTINGS: dict[str, Any] = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "per_channel": True,
    "op_types": ["MatMul", "Attention"],
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
# ONNX Runtime session-level fusions to keep off when running our graphs (see the module docstring).
DISABLED_SESSION_FUSIONS = ("SkipLayerNormFusion",)


@dataclass(frozen=True)
class OnnxExport:
    """An export on disk: its directory and the parsed ``export.json``."""

    directory: Path
    manifest: dict[str, Any]

    def path(self, *, quantized: bool) -> Path:
        """The graph file for fp32 (``quantized=False``) or int8.

        Raises:
            FileNotFoundError: That variant was not exported; the message gives the command that makes it.
        """
        key = Quantization.INT8.value if quantized else "fp32"
        name = self.manifest.get("files", {}).get(key)
        if name is None or not (self.directory / name).is_file():
            flag = " --quantize int8" if quantized else ""
            raise FileNotFoundError(
                f"{self.directory}: no {key} ONNX graph; run `piccolo-embed export --model "
                f"{self.manifest.get('source', {}).get('model_dir', 'MODEL')} --format onnx{flag}`"
            )
        return self.directory / name


def default_onnx_dir(model_dir: Path) -> Path:
    """Where exports of ``model_dir`` live by default: ``MODEL_DIR/onnx``."""
    return Path(model_dir) / ONNX_SUBDIR


def weights_fingerprint(model_dir: Path) -> dict[str, str]:
    """Size plus a hash of the first and last MiB of every weight file: cheap, and catches retraining in place."""
    fingerprint = {}
    for path in sorted(Path(model_dir).rglob("*")):
        if path.suffix not in _WEIGHT_SUFFIXES or not path.is_file() or ONNX_SUBDIR in path.parts:
            continue
        size = path.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(0, size - (1 << 20)))
            digest.update(handle.read(1 << 20))
        fingerprint[str(path.relative_to(model_dir))] = digest.hexdigest()[:16]
    return fingerprint


def read_export(directory: Path, model_dir: Path | None = None) -> OnnxExport:
    """Read ``export.json`` in ``directory``; with ``model_dir``, refuse an export of other weights.

    Raises:
        FileNotFoundError: Nothing was exported there.
        ValueError: The export was made from weights that have changed since.
    """
    manifest_path = Path(directory) / MANIFEST_FILE
    if not manifest_path.is_file():
        hint = model_dir if model_dir is not None else "MODEL"
        raise FileNotFoundError(
            f"no ONNX export in {directory}; run `piccolo-embed export --model {hint} --format onnx`"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if model_dir is not None and manifest.get("source", {}).get("weights") != weights_fingerprint(model_dir):
        raise ValueError(
            f"the ONNX export in {directory} was made from different weights than {model_dir}; "
            f"re-run `piccolo-embed export --model {model_dir} --format onnx`"
        )
    return OnnxExport(Path(directory), manifest)


class _EmbeddingGraph(torch.nn.Module):
    """The sentence-transformers pipeline as a module of two tensors, which is what ``torch.onnx`` traces."""

    def __init__(self, model: SentenceTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.model(features)[OUTPUT_NAME]


def export_onnx(
    model_dir: Path,
    *,
    quantize: Quantization | str = Quantization.NONE,
    output_dir: Path | None = None,
    fuse: bool = True,
    force: bool = False,
) -> OnnxExport:
    """Export ``model_dir`` to ONNX fp32 and optionally int8; graphs already current are reused.

    An export is current when it was made from the same weights, by this exporter format, with the same
    ``fuse`` setting; anything else is redone, and a stale int8 graph is deleted with its fp32 source.

    Args:
        model_dir: A local model directory (see :func:`~piccolo_embed.modeling.loading.resolve_model_dir`).
        quantize: ``int8`` also writes a dynamically quantised copy.
        output_dir: Where to write; default ``MODEL_DIR/onnx``.
        fuse: Fuse BERT-family graphs with ONNX Runtime's transformer optimiser (faster, same numbers).
        force: Redo every graph even if current.

    Returns:
        The export, with its manifest.
    """
    from piccolo_embed.modeling.loading import load_sentence_transformer

    quantize = Quantization.parse(quantize)
    model_dir = Path(model_dir)
    directory = Path(output_dir) if output_dir is not None else default_onnx_dir(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {} if force else _current_manifest(directory, model_dir, fuse=fuse)
    if not manifest:
        model = load_sentence_transformer(model_dir, device="cpu").eval()
        (directory / INT8_FILE).unlink(missing_ok=True)  # quantised from the graph being replaced
        manifest = _export_fp32(model, model_dir, directory / FP32_FILE, fuse=fuse)
    if quantize is Quantization.INT8 and Quantization.INT8.value not in manifest["files"]:
        quantize_int8(directory / FP32_FILE, directory / INT8_FILE)
        manifest["files"][Quantization.INT8.value] = INT8_FILE
        manifest["int8"] = INT8_SETTINGS
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return OnnxExport(directory, manifest)


def _current_manifest(directory: Path, model_dir: Path, *, fuse: bool) -> dict[str, Any]:
    """The manifest of a reusable export in ``directory``, with files that no longer exist dropped; else ``{}``."""
    try:
        manifest = read_export(directory, model_dir).manifest
    except (FileNotFoundError, ValueError):
        return {}
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("fused") != fuse:
        return {}
    manifest["files"] = {key: name for key, name in manifest["files"].items() if (directory / name).is_file()}
    return manifest if "fp32" in manifest["files"] else {}


def _export_fp32(model: SentenceTransformer, model_dir: Path, path: Path, *, fuse: bool) -> dict[str, Any]:
    """Trace the pipeline to ``path`` and return the manifest describing it."""
    config = model[0].auto_model.config
    fusable = fuse and config.model_type in FUSABLE_MODEL_TYPES
    if fusable:
        # The fuser matches the eager attention pattern; SDPA exports as a pattern it does not recognise.
        model[0].auto_model.set_attn_implementation("eager")
    # Padded example rows, so the trace keeps the attention-mask arithmetic instead of specialising it away.
    example = model.tokenizer(["样例文本，长一些。", "短"], padding=True, return_tensors="pt")
    inputs = (example["input_ids"], example["attention_mask"])
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # Position-id indexing; the exporter warns about negative indices, which these never are.
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            _EmbeddingGraph(model).eval(),
            inputs,
            str(path),
            dynamo=False,  # the dynamo exporter needs onnxscript, which is not a dependency
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**dynamic, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
        )
    if fusable:
        _fuse_bert(path, num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
    return {
        "format_version": FORMAT_VERSION,
        "exporter": f"piccolo-embed {__version__}",
        "source": {"model_dir": str(model_dir), "weights": weights_fingerprint(model_dir)},
        "model_type": config.model_type,
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "dim": int(model.get_embedding_dimension()),
        "opset": OPSET,
        "fused": fuse,
        "files": {"fp32": FP32_FILE},
        "versions": _versions(),
    }


def _fuse_bert(path: Path, *, num_heads: int, hidden_size: int) -> None:
    """Rewrite ``path`` in place with ONNX Runtime's BERT fusions."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False  # slower than Add + LayerNormalization on CPU; see module docstring
    options.enable_bias_skip_layer_norm = False
    with _quiet_logs():
        optimized = optimize_model(
            str(path),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1,
            optimization_options=options,
        )
        stats = optimized.get_fused_operator_statistics()
        optimized.save_model_to_file(str(path))
    log.info("fused ONNX graph: %s", {op: n for op, n in stats.items() if n})
    if not stats.get("Attention"):
        log.warning("ONNX Runtime fused no Attention op; the graph is correct but slower than it could be")


def quantize_int8(source: Path, target: Path) -> None:
    """Write a dynamic int8 copy of the fp32 graph ``source`` (weights int8, activations quantised per batch)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_logs():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=INT8_SETTINGS["per_channel"],
            op_types_to_quantize=INT8_SETTINGS["op_types"],
            # Fused ops (com.microsoft domain) defeat shape inference; their outputs are fp32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Silence ONNX Runtime's tools, which log a line per node at INFO, some of it on the root logger."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(previous)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
