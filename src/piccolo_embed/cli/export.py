"""``piccolo-embed export``: write an ONNX (fp32, optionally int8) copy of a model and check it against torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from piccolo_embed.types import Quantization, Role

# Mixed lengths and both scripts, so padding and truncation paths are all exercised by the check.
CHECK_TEXTS = (
    "今天天气很好，我们去公园散步。",
    "中国的首都是哪里？",
    "如何学习深度神经网络模型训练，需要准备哪些数据，训练多久才能看到效果？" * 3,
    "机器人",
    "the quick brown fox jumps over the lazy dog",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser("export", help="export a model to ONNX (fp32, optionally int8) next to it")
    parser.add_argument("--model", required=True, help="local model directory, hub id, or 'starter'")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="ONNX is the only format")
    parser.add_argument("--quantize", choices=[q.value for q in Quantization], default=Quantization.NONE.value)
    parser.add_argument("--output", type=Path, default=None, help="output directory (default: MODEL_DIR/onnx)")
    parser.add_argument("--no-fuse", action="store_true", help="skip ONNX Runtime's BERT fusions")
    parser.add_argument("--force", action="store_true", help="redo the graphs even if they are current")
    parser.add_argument("--no-check", action="store_true", help="skip comparing the export with torch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, then compare each exported graph with the torch path on a few texts; exit 1 if fp32 differs."""
    from piccolo_embed.inference.export import export_onnx
    from piccolo_embed.modeling.loading import resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    export = export_onnx(
        model_dir, quantize=args.quantize, output_dir=args.output, fuse=not args.no_fuse, force=args.force
    )
    for key, name in export.manifest["files"].items():
        size = (export.directory / name).stat().st_size / 2**20
        print(f"{key}: {export.directory / name} ({size:.0f} MiB)")
    if args.no_check:
        return 0
    return _check(args.model, export.directory, quantized=Quantization.INT8.value in export.manifest["files"])


def _check(spec: str, onnx_dir: Path, *, quantized: bool) -> int:
    """Print the largest difference (fp32) and smallest cosine (int8) against torch; fail if fp32 is off."""
    import numpy as np

    from piccolo_embed.inference.embedder import Embedder
    from piccolo_embed.inference.onnx_runner import load_onnx_embedder

    reference = Embedder.from_pretrained(spec, device="cpu").encode(CHECK_TEXTS, Role.PASSAGE)
    fp32 = load_onnx_embedder(spec, onnx_dir=onnx_dir).encode(CHECK_TEXTS, Role.PASSAGE)
    worst = float(np.abs(fp32 - reference).max())
    print(f"check fp32: max |onnx - torch| = {worst:.2e} over {len(CHECK_TEXTS)} texts")
    if quantized:
        int8 = load_onnx_embedder(spec, quantized=True, onnx_dir=onnx_dir).encode(CHECK_TEXTS, Role.PASSAGE)
        print(f"check int8: min cosine to torch fp32 = {float((int8 * reference).sum(axis=1).min()):.4f}")
    if worst > 1e-4:
        print("error: the fp32 export does not reproduce the torch embeddings (tolerance 1e-4)")
        return 1
    return 0
