"""Two CPU processes under ``torchrun`` train to the same weights as one process with the doubled batch.

This runs the whole stack across ranks: the rank-sharded one-dataset sampler, negatives gathered across
devices, DDP gradient averaging through accelerate, and saving from rank 0 only. Dropout is off, so the only
difference between the runs is where the batch is split.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from piccolo_embed.training.config import RunConfig
from piccolo_embed.training.run import train_from_config

LAUNCHER = """
import sys
from piccolo_embed.training.config import RunConfig
from piccolo_embed.training.run import train_from_config
train_from_config(RunConfig.from_yaml(sys.argv[1]))
"""
WORDS = "今天天气很好我们去公园散步明天会下雨吗北京上海的美食推荐如何学习编程机器人工智能医院看病感冒发烧吃药手机电脑"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(tmp_path: Path, model: Path, data: Path, name: str, batch_size: int) -> Path:
    raw = {
        "model": {"name": str(model), "query_max_length": 16, "passage_max_length": 16},
        "data": {"datasets": [{"file": str(data)}], "num_negatives": 1, "cache_dir": str(tmp_path / "arrow")},
        "loss": {"contrastive": "gte", "temperature": 0.05, "gather_across_devices": True},
        "training": {
            "output_dir": str(tmp_path / name),
            "batch_size": batch_size,
            "learning_rate": 1e-3,
            "max_steps": 4,
            "log_every": 1,
        },
    }
    RunConfig.from_mapping(raw)  # validate before launching
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


@pytest.mark.dist
def test_two_ranks_match_one_process_with_the_global_batch(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (tiny_bert_dir / "config.json").write_text(json.dumps(config))
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"query": WORDS[i : i + 5], "pos": [WORDS[i + 3 : i + 12]], "neg": [WORDS[i + 20 : i + 27]]} for i in range(24)
    ]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    single = train_from_config(RunConfig.from_yaml(_config(tmp_path, tiny_bert_dir, data, "single", 8)))
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        str(launcher), str(_config(tmp_path, tiny_bert_dir, data, "ddp", 4)),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    want, got = load_file(str(single / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
    logs = [(d / "log.jsonl").read_text().splitlines() for d in (single, tmp_path / "ddp")]
    losses = [[json.loads(line)["loss"] for line in log] for log in logs]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
