"""The server load benchmark runs end to end on a clean clone (tiny model, generated texts, short phases)."""

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
