"""int8 ONNX fidelity on the starter model: cosine to fp32, and C-MTEB-mini scores that must not move.

Slow (minutes on 2 cores: exports the starter if needed, encodes ~7k texts twice). Run with
``pytest -m slow tests/perf/test_int8_fidelity_slow.py -s`` to see the numbers.
"""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from piccolo_embed import Embedder
from piccolo_embed.inference.export import default_onnx_dir, export_onnx, read_export
from piccolo_embed.inference.onnx_runner import load_onnx_embedder
from piccolo_embed.modeling.loading import resolve_model_dir

EVAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "eval" / "cmteb-mini"
SCORE_TASKS = ("STSB", "PAWSX")
MAX_SCORE_MOVE = 0.005  # half a point on the 0-100 scale
MIN_MEAN_COSINE = 0.99

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EVAL_DIR.is_dir(), reason=f"needs the cmteb-mini tasks at {EVAL_DIR}"),
]


def _jsonl(path):
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _mixed_texts(per_band=100):
    """Short sentences, medium medical answers and long Wikipedia passages: int8 error grows with length."""
    short = [row["sentence1"] for row in _jsonl(EVAL_DIR / "STSB" / "test.jsonl")]
    medium = [text for row in _jsonl(EVAL_DIR / "MedQARerank" / "test.jsonl") for text in row["positive"]]
    long = [row["text"] for row in _jsonl(EVAL_DIR / "CMRC2018Retrieval" / "corpus.jsonl")]
    rng = np.random.default_rng(0)
    return [str(t) for band in (short, medium, long) for t in rng.choice(band, size=per_band, replace=False)]


@pytest.fixture(scope="module")
def embedders():
    fp32 = Embedder.from_pretrained("starter", device="cpu")
    model_dir = resolve_model_dir("starter")
    try:
        read_export(default_onnx_dir(model_dir), model_dir).path(quantized=True)
    except (FileNotFoundError, ValueError):
        export_onnx(model_dir, quantize="int8")
    return fp32, load_onnx_embedder("starter", quantized=True)


def test_int8_mean_cosine_to_fp32(embedders):
    fp32, int8 = embedders
    texts = _mixed_texts()
    cosine = (fp32.encode(texts, "passage") * int8.encode(texts, "passage")).sum(axis=1)
    print(f"\nint8 vs fp32 cosine over {len(texts)} texts: mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    assert cosine.mean() >= MIN_MEAN_COSINE


def _cpu_has_vnni() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni"))


# The bar was set on a CPU with VNNI; without VNNI int8 moves scores further (docs/performance.md, int8 section),
# so there the evaluation could only report a known miss: skip it rather than run a non-strict xfail.
@pytest.mark.skipif(
    not _cpu_has_vnni(),
    reason="int8 moves scores past the bar on CPUs without VNNI (docs/performance.md)",
)
def test_int8_moves_cmteb_mini_scores_by_at_most_half_a_point(embedders):
    from piccolo_embed.evaluation import evaluate

    fp32, int8 = embedders
    tasks = [EVAL_DIR / name for name in SCORE_TASKS]
    before = {r.name: r.main_score for r in evaluate(fp32, tasks).tasks}
    after = {r.name: r.main_score for r in evaluate(int8, tasks).tasks}
    for name in SCORE_TASKS:
        print(f"\n{name}: fp32 {100 * before[name]:.2f}  int8 {100 * after[name]:.2f}")
    moves = {name: abs(after[name] - before[name]) for name in SCORE_TASKS}
    assert all(move <= MAX_SCORE_MOVE for move in moves.values()), moves
