"""The training-throughput benchmark runs end to end on a clean clone (tiny model, bundled demo pairs)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.mark.slow
def test_quick_run_prints_both_engines_and_their_ratio(tmp_path):
    out = tmp_path / "result.json"
    data = tmp_path / "absent.jsonl"  # forces the bundled demo pairs, so the test does not need ../shared
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--model", "tiny", "--data", str(data), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ours / st:" in done.stdout

    result = json.loads(out.read_text())
    assert set(result["pairs_per_s"]) == {"ours", "st"}
    assert all(rate > 0 for rate in result["pairs_per_s"].values())
    assert all(len(steps) == 2 * 5 for steps in result["step_seconds"].values())  # 2 rounds x (6 - 1 dropped)
