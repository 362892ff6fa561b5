"""Checkpoint directories: ``output_dir/checkpoints/step-00000100``, newest intact one wins, oldest rotated out.

Why not ``accelerator.save_state``: it pickles the RNG states and custom objects and loads them back with
``weights_only=False``, so a crafted file in a checkpoint directory would run code on ``--resume``. Ours holds
only what loads without unpickling: the model as safetensors, optimizer/scheduler/scaler and RNG states as plain
tensors and numbers (read with ``torch.load(weights_only=True)``), and ``checkpoint.json`` (step, sampler position,
the run's config and every file's size). ``checkpoint.json`` is written last, after every file is synced, so a
run killed mid-save leaves a directory that :func:`checkpoints` ignores.

DeepSpeed runs save accelerate's format, since DeepSpeed's engine writes its own (partitioned, pickled) files; such
a checkpoint is never resumed (:data:`DEEPSPEED_REFUSAL`): a weights-only load of DeepSpeed's files would need
DeepSpeed's own classes allowed, which cannot be checked without DeepSpeed, and its loader unpickles them anyway.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from piccolo_embed import distributed
from piccolo_embed.atomic import fsync_tree, write_json_atomic
from piccolo_embed.errors import CheckpointError

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
RECORD = "checkpoint.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
FORMAT_VERSION = 2
DEEPSPEED_REFUSAL = (
    "a DeepSpeed checkpoint is not resumed: DeepSpeed and accelerate save it as pickles, and loading a pickle runs "
    "whatever code a crafted file in the directory holds. Start the run afresh (--overwrite), or train without "
    "training.deepspeed, whose checkpoints hold no pickles and resume safely. To keep the weights of a checkpoint "
    "you made yourself, convert them with DeepSpeed's zero_to_fp32.py and start a new run from the result"
)


def checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints under ``output_dir`` whose save completed (their ``checkpoint.json`` exists), oldest first."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [path for path in root.glob(f"{PREFIX}*") if (path / RECORD).is_file()]
    return sorted(found, key=lambda path: int(path.name.removeprefix(PREFIX)))


def read_record(path: Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``path`` after checking that every file it lists is whole and the weights parse.

    Raises:
        CheckpointError: Unreadable record, a missing or truncated file, or weights safetensors cannot read.
    """
    try:
        record = json.loads((path / RECORD).read_text(encoding="utf-8"))
        files = record["files"]
        int(record["step"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / RECORD}: unreadable or from an older format ({err})") from err
    for name, size in files.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            actual = file.stat().st_size if file.is_file() else "missing"
            raise CheckpointError(f"{file}: {actual} bytes, {size} recorded (truncated or replaced)")
    if MODEL_FILE in files:
        try:
            with safe_open(str(path / MODEL_FILE), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors raises its own SafetensorError, not an OSError
            raise CheckpointError(f"{path / MODEL_FILE}: not readable as safetensors ({err})") from err
    return record


def _remove_unfinished(output_dir: Path) -> None:
    """Remove the checkpoint directories without a record: saves that a kill interrupted.

    Called once the current save is recorded, so every unrecorded one is a save that no process is writing.
    """
    for path in (output_dir / CHECKPOINTS).glob(f"{PREFIX}*"):
        if not (path / RECORD).is_file():
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s: a checkpoint save that was interrupted", path)


def intact_checkpoints(output_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Checkpoints that pass :func:`read_record`, newest first; each broken one skipped with a warning."""
    for path in reversed(checkpoints(output_dir)):
        try:
            record = read_record(path)
        except CheckpointError as err:
            log.warning("skipping broken checkpoint %s: %s", path.name, err)
            continue
        yield path, record


def save_checkpoint(
    accelerator: Accelerator,
    objects: TrainingObjects,
    output_dir: Path,
    progress: Mapping[str, int],
    *,
    keep: int,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Save the full training state at ``progress["step"]`` and keep only the ``keep`` newest checkpoints."""
    path = output_dir / CHECKPOINTS / f"{PREFIX}{progress['step']:08d}"
    if distributed.is_main():
        shutil.rmtree(path, ignore_errors=True)  # a leftover of a killed save, or of a run resumed before it
        path.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.save_state(str(path))
    elif distributed.is_main():
        save_model(accelerator.unwrap_model(objects.model), str(path / MODEL_FILE))
        torch.save(objects.state_dict(accelerator), path / STATE_FILE)
    torch.save(_rng_state(), path / f"rng-{distributed.rank()}.pt")
    accelerator.wait_for_everyone()
    if distributed.is_main():
        fsync_tree(path)
        files = {file.name: file.stat().st_size for file in sorted(path.iterdir()) if file.is_file()}
        record = {"format_version": FORMAT_VERSION, **progress, "files": files, "config": config}
        write_json_atomic(path / RECORD, record)
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        _remove_unfinished(output_dir)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator: Accelerator, objects: TrainingObjects, path: Path) -> None:
    """Restore what :func:`save_checkpoint` wrote, without unpickling anything but tensors and plain values.

    Raises:
        CheckpointError: A file is missing, corrupt, or holds anything but tensors and plain values; or the run
            uses DeepSpeed, whose checkpoints are pickles (:data:`DEEPSPEED_REFUSAL`).
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise CheckpointError(f"{path}: {DEEPSPEED_REFUSAL}")
    try:
        load_model(accelerator.unwrap_model(objects.model), str(path / MODEL_FILE), strict=True)
        objects.load_state_dict(accelerator, torch.load(path / STATE_FILE, map_location="cpu", weights_only=True))
        _set_rng_state(torch.load(path / f"rng-{distributed.rank()}.pt", weights_only=True))
    except Exception as err:  # safetensors, the unpickler and load_state_dict each raise their own types
        raise CheckpointError(f"{path}: cannot be restored ({type(err).__name__}: {err})") from err


class TrainingObjects:
    """What a checkpoint restores besides the RNGs: model, optimizer, scheduler and the grad scaler."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def state_dict(self, accelerator: Accelerator) -> dict[str, Any]:
        """Optimizer, scheduler and scaler states: tensors, numbers and lists only."""
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "scaler": scaler}

    def load_state_dict(self, accelerator: Accelerator, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])


def _rng_state() -> dict[str, Any]:
    """Every RNG of this process as tensors and plain values (numpy's key array as an int64 tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
