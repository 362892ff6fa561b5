"""Training throughput: ``piccolo-embed train`` vs a plain sentence-transformers run, or fp32 vs bf16 autocast.

    python benchmarks/train_throughput.py --model runs/cpu_full/starter-trimmed      # lcsts, 64 pairs/step
    python benchmarks/train_throughput.py --quick --model tiny                       # smoke run, ~1 min
    python benchmarks/train_throughput.py --compare precision --model DIR            # ours in fp32 vs bf16 (AMX)
    python benchmarks/train_throughput.py --compare precision --loss-steps 100 --model DIR   # loss agreement

``--compare precision`` times our trainer in fp32 and under bf16 autocast (fp32 master weights and AdamW) with
every other setting equal. ``--loss-steps N`` instead trains N steps per precision with two seeds each and prints
the loss curves in windows of 10 steps: bf16 agrees with fp32 when its gap to fp32 (same seed) is within the gap
between the two fp32 seeds, the run-to-run noise.

Both engines train the same model on the same pairs: batch size, max length (128), prefixes, learning rate,
warm-up, weight decay, gradient clipping, AdamW, fp32, in-batch negatives with the same temperature
(sentence-transformers' ``MultipleNegativesRankingLoss(scale=1/temperature)``), seed 42.

* ``ours``: :func:`piccolo_embed.training.run.train_from_config` on a one-dataset config, as the CLI runs it.
* ``st``: ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss``, prompts per column, no saving.

Rounds run in ABBA order (ours, st, st, ours, ...) so a change in machine load spreads over both. A step's time is
the gap between the ends of consecutive optimizer steps (data loading and tokenisation included, for both); the
first ``--skip`` steps of every round are dropped (warm-up, allocator growth). Reported: median pairs/s over the
kept steps of all rounds, and the ratio ours/st. ``uptime`` before and after says how loaded the machine was.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LCSTS = REPO.parent / "shared" / "data" / "train" / "stage1" / "lcsts.jsonl"  # ../shared, read in place
TEMPERATURE = 0.01


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="starter", help="model spec; 'tiny' builds a random 2-layer BERT")
    parser.add_argument("--data", type=Path, default=LCSTS, help="FlagEmbedding JSONL (query/pos); read in place")
    parser.add_argument("--kind", default="s2p", choices=["s2p", "s2s"], help="s2p: query/passage prefixes")
    parser.add_argument("--query-prefix", default="query: ")
    parser.add_argument("--passage-prefix", default="passage: ")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per round")
    parser.add_argument("--skip", type=int, default=2, help="steps dropped at the start of every round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds in ABBA order (even: each engine half)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 6 steps, batch 16")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--compare", choices=["st", "precision"], default="st", help="what to set against ours")
    parser.add_argument("--loss-steps", type=int, default=0, help="precision only: loss agreement over N steps")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.batch_size, args.skip = 6, 2, 16, 1
    if not args.data.is_file():
        from piccolo_embed.data.sources import resolve_data_file

        print(f"{args.data} not found (../shared is absent or lacks it): using the bundled demo pairs")
        args.data = resolve_data_file("resource:train_demo.jsonl")
    return args


def model_dir(spec: str, workdir: Path) -> Path:
    """A local model directory; ``tiny`` is a random BERT with the starter-like vocabulary of the test suite."""
    if spec != "tiny":
        from piccolo_embed.modeling.loading import resolve_model_dir

        return resolve_model_dir(spec)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_bert

    return build_tiny_bert(workdir / "tiny")


def run_ours(
    args: argparse.Namespace, model: Path, out: Path, precision: str = "fp32", seed: int = 42
) -> list[dict[str, float]]:
    """One round of our trainer; its ``log.jsonl`` entries (logged every step)."""
    from piccolo_embed.training.config import RunConfig
    from piccolo_embed.training.run import train_from_config

    config = RunConfig.from_mapping(
        {
            "model": {
                "name": str(model),
                "query_prefix": args.query_prefix,
                "passage_prefix": args.passage_prefix,
                "query_max_length": args.max_length,
                "passage_max_length": args.max_length,
                "s2s_max_length": args.max_length,
            },
            "data": {"datasets": [{"file": str(args.data), "kind": args.kind}], "num_negatives": 0},
            "loss": {"contrastive": "infonce", "temperature": TEMPERATURE},
            "training": {
                "output_dir": str(out),
                "batch_size": args.batch_size,
                "max_steps": args.steps,
                "warmup_steps": 2,
                "log_every": 1,
                "precision": precision,
                "seed": seed,
            },
        }
    )
    train_from_config(config)
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def ours_seconds(precision: str) -> Callable[[argparse.Namespace, Path, Path], list[float]]:
    """Per-step seconds of our trainer at ``precision``."""

    def run(args: argparse.Namespace, model: Path, out: Path) -> list[float]:
        entries = run_ours(args, model, out, precision)
        return [args.batch_size / entry["pairs_per_s"] for entry in entries if "pairs_per_s" in entry]

    return run


def run_st(args: argparse.Namespace, model: Path, out: Path) -> list[float]:
    """One round of plain sentence-transformers training with the same settings; per-step seconds by callback."""
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = datasets.Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["pos"][0] for r in rows]})
    st_model = SentenceTransformer(str(model), device="cpu")
    st_model.max_seq_length = args.max_length
    prompts = {"anchor": args.query_prefix, "positive": args.passage_prefix} if args.kind == "s2p" else None
    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, *_args, **_kwargs):
            ends.append(time.perf_counter())

        def on_step_end(self, *_args, **_kwargs):
            ends.append(time.perf_counter())

    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=2e-5,
        warmup_steps=2,
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=42,
        save_strategy="no",
        report_to="none",
        logging_steps=args.steps,
        dataloader_drop_last=True,
        prompts=prompts,
        use_cpu=True,
    )
    loss = MultipleNegativesRankingLoss(st_model, scale=1 / TEMPERATURE)
    trainer = SentenceTransformerTrainer(
        model=st_model, args=training_args, train_dataset=pairs, loss=loss, callbacks=[StepTimes()]
    )
    trainer.train()
    return [later - earlier for earlier, later in itertools.pairwise(ends)]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def loss_agreement(args: argparse.Namespace) -> int:
    """Loss curves of fp32 and bf16, two seeds each, in windows of 10 steps."""
    curves: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp))
        args.steps = args.loss_steps
        for seed in (1, 2):
            for precision in ("fp32", "bf16"):
                entries = run_ours(args, model, Path(tmp) / f"{precision}-{seed}", precision, seed)
                curves[f"{precision}/{seed}"] = [entry["loss"] for entry in entries]
    windows = range(0, args.loss_steps, 10)
    print(f"{'steps':>9s} " + " ".join(f"{name:>9s}" for name in curves) + "  bf16-fp32  seed2-seed1 (fp32)")
    gaps, noise = [], []
    for start in windows:
        mean = {name: statistics.fmean(values[start : start + 10]) for name, values in curves.items()}
        gap = statistics.fmean([mean["bf16/1"] - mean["fp32/1"], mean["bf16/2"] - mean["fp32/2"]])
        gaps.append(abs(gap))
        noise.append(abs(mean["fp32/2"] - mean["fp32/1"]))
        cells = " ".join(f"{value:9.4f}" for value in mean.values())
        print(f"{start + 1:4d}-{start + 10:<4d} {cells}  {gap:+9.4f}  {mean['fp32/2'] - mean['fp32/1']:+10.4f}")
    print(f"mean |bf16 - fp32| {statistics.fmean(gaps):.4f}; mean |fp32 seed 2 - seed 1| {statistics.fmean(noise):.4f}")
    if args.json:
        args.json.write_text(json.dumps({"loss_curves": curves, "args": vars(args)}, default=str, indent=2))
    return 0


def main() -> int:
    args = parse_args()
    if args.compare == "precision" and args.loss_steps:
        return loss_agreement(args)
    engines: dict[str, Callable[[argparse.Namespace, Path, Path], list[float]]]
    if args.compare == "precision":
        engines = {"fp32": ours_seconds("fp32"), "bf16": ours_seconds("bf16")}
    else:
        engines = {"st": run_st, "ours": ours_seconds("fp32")}
    first, second = engines
    order = [(first, second) if r % 2 == 0 else (second, first) for r in range(args.rounds)]
    before = uptime()
    step_seconds: dict[str, list[float]] = {name: [] for name in engines}
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args.model, Path(tmp))
        for round_, names in enumerate(order):
            for name in names:
                seconds = engines[name](args, model, Path(tmp) / f"{name}-{round_}")
                kept = seconds[args.skip :]
                step_seconds[name].extend(kept)
                print(f"round {round_ + 1}/{args.rounds} {name:4s}: median {statistics.median(kept):.2f} s/step")
    after = uptime()
    rate = {name: args.batch_size / statistics.median(values) for name, values in step_seconds.items()}
    print(
        f"\nmodel {args.model}, data {args.data.name} ({args.kind}), batch {args.batch_size}, max length "
        f"{args.max_length}, {args.rounds} rounds x {args.steps} steps (first {args.skip} dropped), "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    print(f"{'engine':6s} {'pairs/s':>8s} {'s/step':>7s} {'steps':>6s}")
    for name, values in step_seconds.items():
        print(f"{name:6s} {rate[name]:8.1f} {statistics.median(values):7.2f} {len(values):6d}")
    print(f"{second} / {first}: {rate[second] / rate[first]:.2f}x pairs/s")
    print(f"uptime before: {before}\nuptime after:  {after}")
    if args.json:
        args.json.write_text(
            json.dumps({"pairs_per_s": rate, "step_seconds": step_seconds, "args": vars(args)}, default=str, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
