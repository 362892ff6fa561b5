"""ONNX Runtime backend: a :class:`~piccolo_embed.inference.runners.BatchRunner` over an exported graph.

The exported graph already ends in the model's pooling and normalisation (see
:mod:`piccolo_embed.inference.export`), so the runner only feeds ids and mask and returns the output.
Tokenisation, roles and length-sorted batching stay in :class:`~piccolo_embed.inference.embedder.Embedder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from piccolo_embed.defaults import BATCH_SIZE, MAX_BATCH_TOKENS
from piccolo_embed.inference.embedder import Embedder
from piccolo_embed.inference.export import DISABLED_SESSION_FUSIONS, default_onnx_dir, read_export
from piccolo_embed.modeling.loading import resolve_model_dir
from piccolo_embed.types import Device, Engine, RolePreset, RoleSpecs

if TYPE_CHECKING:
    import onnxruntime


class OnnxRunner:
    """Embeds padded batches with an exported graph on ONNX Runtime's CPU provider.

    Args:
        path: An ``.onnx`` file written by :func:`~piccolo_embed.inference.export.export_onnx`.
        threads: Intra-op threads; default ``torch.get_num_threads()``, so both backends use the same cores.
        spin: Let idle worker threads busy-wait between ops (ONNX Runtime's default). Off by default: on our
            shared 2-core machine spinning made the int8 starter 20% slower in wall time, because spinning
            threads take the cores that the other thread (and every other process) is waiting for.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, spin: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.path = Path(path)
        self.session: onnxruntime.InferenceSession = ort.InferenceSession(
            str(self.path),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_SESSION_FUSIONS),
        )
        self._input_names = {node.name for node in self.session.get_inputs()}
        self._output_name = self.session.get_outputs()[0].name

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Embed one padded batch: int64 ``(rows, width)`` ids and mask in, float32 ``(rows, dim)`` out."""
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        if "token_type_ids" in self._input_names:  # graphs exported by other tools may want them
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        (embeddings,) = self.session.run([self._output_name], feeds)
        return np.asarray(embeddings, dtype=np.float32)


def onnx_runner(
    model_dir: Path, *, quantized: bool = False, onnx_dir: Path | None = None, threads: int | None = None
) -> OnnxRunner:
    """The runner of the engines ``onnx`` (fp32 graph) and ``onnx-int8`` (``quantized``) for ``model_dir``.

    Args:
        model_dir: The model's local directory; its export must match its current weights.
        quantized: Use the int8 graph instead of fp32.
        onnx_dir: Where the export is; default ``MODEL_DIR/onnx``.
        threads: ONNX Runtime intra-op threads (default: torch's thread count).

    Raises:
        FileNotFoundError: The export (or its int8 variant) does not exist.
        ValueError: The export was made from other weights.
    """
    export = read_export(onnx_dir or default_onnx_dir(model_dir), model_dir)
    return OnnxRunner(export.path(quantized=quantized), threads=threads)


def load_onnx_embedder(
    spec: str | Path,
    *,
    quantized: bool = False,
    roles: RoleSpecs | RolePreset | str | None = None,
    batch_size: int = BATCH_SIZE,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    onnx_dir: Path | None = None,
    threads: int | None = None,
) -> Embedder:
    """:meth:`Embedder.from_pretrained` with engine ``onnx`` or ``onnx-int8``, for an export kept elsewhere.

    ``from_pretrained(spec, engine="onnx")`` is the usual way; this adds the export's location and thread count
    (``piccolo-embed export --output DIR`` and its check use it).
    """
    runner = onnx_runner(resolve_model_dir(spec), quantized=quantized, onnx_dir=onnx_dir, threads=threads)
    return Embedder.from_pretrained(
        spec,
        roles=roles,
        device=Device.CPU,
        engine=Engine.ONNX_INT8 if quantized else Engine.ONNX,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        runner=runner,
    )
