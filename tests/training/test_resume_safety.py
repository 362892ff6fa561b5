"""``--resume`` checks: config changes refused or explicitly allowed, broken checkpoints skipped, no unpickling."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from piccolo_embed.atomic import staging_prefix
from piccolo_embed.errors import CheckpointError
from piccolo_embed.training.checkpoint import (
    RECORD,
    TrainingObjects,
    checkpoints,
    intact_checkpoints,
    load_checkpoint,
)
from piccolo_embed.training.resume import check_resume_config, config_changes
from piccolo_embed.training.run import train_from_config

RECORDED = {"training": {"learning_rate": 0.001, "log_every": 10}, "data": {"datasets": [{"file": "a.jsonl"}]}}


def _changed(**training: object) -> dict:
    return {**RECORDED, "training": {**RECORDED["training"], **training}}


def test_config_changes_name_each_changed_key() -> None:
    current = {"training": {"learning_rate": 0.002, "log_every": 10}, "data": {"datasets": [{"file": "b.jsonl"}]}}
    assert config_changes(RECORDED, current) == {
        "data.datasets.0.file": ("a.jsonl", "b.jsonl"),
        "training.learning_rate": (0.001, 0.002),
    }


def test_a_changed_learning_rate_is_refused_with_a_readable_diff() -> None:
    with pytest.raises(ValueError, match=r"training\.learning_rate: 0\.001 -> 0\.002"):
        check_resume_config(RECORDED, _changed(learning_rate=0.002))
    with pytest.raises(ValueError, match="not changeable on resume"):
        check_resume_config(RECORDED, _changed(learning_rate=0.002), allowed=["training.learning_rate"])


def test_bookkeeping_keys_change_only_when_named() -> None:
    with pytest.raises(ValueError, match=r"--allow-change training\.log_every"):
        check_resume_config(RECORDED, _changed(log_every=1))
    check_resume_config(RECORDED, _changed(log_every=1), allowed=["training.log_every"])
    check_resume_config(RECORDED, RECORDED)


def _fake_checkpoint(root: Path, step: int, payload: bytes, recorded_size: int | None = None) -> Path:
    path = root / "checkpoints" / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / "rng-0.pt").write_bytes(payload)
    size = len(payload) if recorded_size is None else recorded_size
    (path / RECORD).write_text(json.dumps({"step": step, "files": {"rng-0.pt": size}, "config": {}}))
    return path


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_checkpoint(tmp_path, 2, b"x" * 10)
    _fake_checkpoint(tmp_path, 4, b"x" * 5, recorded_size=10)
    with caplog.at_level(logging.WARNING):
        found = [path.name for path, _ in intact_checkpoints(tmp_path)]
    assert found == ["step-00000002"]
    assert "step-00000004" in caplog.text and "truncated" in caplog.text


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling this creates the marker file
        return (Path.touch, (self.marker,))


def test_resume_never_unpickles_and_falls_back_past_a_crafted_checkpoint(
    make_config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(max_steps=5, save_every=2, save_total_limit=3)
    output = train_from_config(config)
    assert [p.name for p in checkpoints(output)] == ["step-00000002", "step-00000004"]
    marker = tmp_path / "pwned"
    newest = checkpoints(output)[-1]
    crafted = pickle.dumps(_Payload(marker))
    record = json.loads((newest / RECORD).read_text())
    for path in newest.iterdir():  # every pickle-capable file, with the record edited to match, as an attacker would
        if path.suffix in (".pt", ".pkl", ".bin"):
            path.write_bytes(crafted)
            record.get("files", {})[path.name] = len(crafted)
    (newest / RECORD).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        train_from_config(config, resume=True)
    assert not marker.exists()
    assert "skipping broken checkpoint step-00000004" in caplog.text
    steps = [json.loads(line)["step"] for line in (output / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # resumed from step 2; the lines of the abandoned steps 3-5 were cut


def test_resume_with_a_changed_learning_rate_is_refused_before_training(make_config) -> None:
    output = train_from_config(make_config(max_steps=3, save_every=2))
    with pytest.raises(ValueError, match=r"training\.learning_rate"):
        train_from_config(make_config(max_steps=3, save_every=2, learning_rate=2e-3), resume=True)
    assert [p.name for p in checkpoints(output)] == ["step-00000002"]


def test_a_deepspeed_checkpoint_is_refused_without_unpickling_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeepSpeed's and accelerate's files are pickles: load_checkpoint must refuse them, not load them.

    DeepSpeed need not be installed: a real CPU ``Accelerator`` that reports DeepSpeed takes accelerate's own
    loading path, which unpickles the registered objects' ``custom_checkpoint_*.pkl`` (the scheduler, in a run).
    """
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    accelerator = Accelerator(cpu=True)
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda _: DistributedType.DEEPSPEED))
    accelerator.register_for_checkpointing(scheduler)
    path = tmp_path / "checkpoints" / "step-00000002"
    path.mkdir(parents=True)
    marker = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "rng-0.pt"):
        torch.save(_Payload(marker), path / name)  # torch's own format, as accelerate writes them
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(accelerator, TrainingObjects(model, optimizer, scheduler), path)
    assert not marker.exists()
    assert re.search(r"DeepSpeed.*pickle.*--overwrite", str(refused.value), re.DOTALL)


def test_resume_of_a_deepspeed_run_is_refused_before_anything_loads(make_config) -> None:
    with pytest.raises(CheckpointError, match=r"--resume: a DeepSpeed checkpoint is not resumed"):
        train_from_config(make_config(deepspeed="ds_config.json"), resume=True)


def _dead_writers_staging(target: Path) -> Path:
    """The staging name a killed writer of ``target`` would have left (its pid is that of an exited process)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = target.with_name(staging_prefix(target).replace(f"-{os.getpid()}-", f"-{gone.pid}-") + "abcd1234")
    path.mkdir()
    return path


def test_a_resumed_run_removes_what_killed_saves_left(make_config, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(max_steps=5, save_every=2)
    output = train_from_config(config)
    (checkpoints(output)[-1] / RECORD).unlink()  # the save at step 4 was killed, and one at step 3 earlier
    (output / "checkpoints" / "step-00000003").mkdir()
    litter = [_dead_writers_staging(output), _dead_writers_staging(output / "best")]
    with caplog.at_level(logging.INFO):
        train_from_config(config, resume=True)
    assert not any(path.exists() for path in litter)
    assert all(f"removed {path}: staging left by process" in caplog.text for path in litter)
    assert sorted(path.name for path in (output / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert "step-00000003: a checkpoint save that was interrupted" in caplog.text
