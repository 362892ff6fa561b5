"""Issue 18: SIGKILL at 20 seeded points of each long-running write; nothing half-written loads, reruns complete.

The work happens in tests/fault_worker.py (its docstring explains how kill points are chosen); each scenario runs
in its own interpreter so that forking children is safe (one thread, nothing else running).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

POINTS = 20
WORKER = Path(__file__).with_name("fault_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["build", "append", "overwrite", "save", "train"])
def test_sigkill_at_seeded_points_never_leaves_a_half_written_artefact(scenario, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(WORKER), scenario, "18", str(POINTS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(summary["kill_points"]) == POINTS <= summary["events"]
    assert sum(summary["states"].values()) == POINTS, summary  # every point was killed, checked and rerun
