"""The server load benchmark runs end to end on a clean clone (tiny model, generated texts, short phases)."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_short_run_reports_every_phase_without_errors(tiny_bert_dir, tmp_path):
    argv = [
        "--model",
        str(tiny_bert_dir),
        "--data",
        str(tmp_path / "absent.jsonl"),
        "--clients",
        "4",
        "--duration",
        "2",
    ]
    argv += ["--warmup", "0.5", "--offline-seconds", "0.3", "--offline-repeats", "1", "--texts-per-request", "1", "3"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "generated" in done.stdout  # no ../shared data was read
    rows = re.findall(r"^\s+(\d+)\s+[\d.]+\s+([\d.]+)\s.*\s([\d.]+) (\d+)$", done.stdout, flags=re.MULTILINE)
    assert [(size, errors) for size, _, _, errors in rows] == [("1", "0"), ("3", "0")]
    assert all(float(texts_per_s) > 0 and float(efficiency) > 0 for _, texts_per_s, efficiency, _ in rows)


@pytest.mark.parametrize(("server_threads", "expected"), [(1, 30 / 40), (2, None)])
def test_report_adds_same_threads_efficiency_only_for_a_server_on_fewer_threads(
    server_threads, expected, capsys, load_benchmark
):
    bench = load_benchmark("serve_load")
    tally = bench.Tally(latencies=[0.1] * 30, texts=30)
    args = argparse.Namespace(duration=1.0)
    offline = {1: [40.0, 40.0], 2: [60.0, 50.0, 70.0]}  # medians 40 and 60: 2 threads is the headline baseline
    r = bench.report(args, tally, {}, offline, (1, server_threads))
    assert r.batching_efficiency == pytest.approx(30 / 60)
    assert r.efficiency_vs_same_threads == (None if expected is None else pytest.approx(expected))
    printed = "against offline on the server's 1 thread(s)" in capsys.readouterr().out
    assert printed == (expected is not None)
