import json
from pathlib import Path

import pytest

from piccolo_embed import Embedder, Role
from piccolo_embed.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cpu_quick_config_trains_and_loss_goes_down(tmp_path):
    out = tmp_path / "cpu_quick"
    code = main(["train", "--config", str(REPO / "configs" / "cpu_quick.yaml"), "--set", f"training.output_dir={out}"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) >= 10
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses
    model = Embedder.from_pretrained(out, device="cpu")
    assert model.roles[Role.QUERY].prefix == "查询: "
    assert model.encode(["北京的天气"], "query").shape == (1, 384)
