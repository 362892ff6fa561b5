"""Checkpoint directories: ``output_dir/checkpoints/step-00000100``, newest wins, oldest rotated out.

A checkpoint is ``accelerator.save_state`` (model, optimizer, scaler, every rank's RNG states, and the
registered scheduler and :class:`~piccolo_embed.training.loop.TrainState` with the sampler position) plus a small
``checkpoint.json`` for people.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from piccolo_embed import distributed

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINTS = "checkpoints"
PREFIX = "step-"


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [path for path in root.glob(f"{PREFIX}*") if (path / "checkpoint.json").is_file()]
    return sorted(found, key=lambda path: int(path.name.removeprefix(PREFIX)))


def latest_checkpoint(output_dir: Path) -> Path:
    """The newest complete checkpoint.

    Raises:
        FileNotFoundError: There is none to resume from.
    """
    found = checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"--resume: no checkpoint under {output_dir / CHECKPOINTS}")
    return found[-1]


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> Path:
    """Save the full training state at ``step`` and keep only the ``keep`` newest checkpoints.

    ``checkpoint.json`` is written last, so a run killed mid-save leaves a directory that
    :func:`checkpoints` ignores.
    """
    path = output_dir / CHECKPOINTS / f"{PREFIX}{step:08d}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if distributed.is_main():
        (path / "checkpoint.json").write_text(json.dumps({"step": step}) + "\n", encoding="utf-8")
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path
