"""What ``train --resume`` may change: the config is compared key by key with the one the checkpoint recorded.

A resumed run restores the optimizer and learning-rate schedule of the checkpoint, so a changed learning rate,
batch size, step count, prefix or dataset would not take effect cleanly (or would switch mid-run). Such changes
are refused with a readable diff; only the bookkeeping keys of :data:`RESUMABLE_CHANGES` may change, each named
explicitly with ``--allow-change KEY``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

# Keys that change how a run is logged, saved and watched, never what it computes.
RESUMABLE_CHANGES: frozenset[str] = frozenset(
    {
        "training.output_dir",
        "training.log_every",
        "training.save_every",
        "training.save_total_limit",
        "training.tensorboard",
        "training.eval.tasks",
        "training.eval.every",
        "training.eval.max_per_task",
        "data.cache_dir",
    }
)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [{"c": 2}]}`` → ``{"a.b": 1, "l.0.c": 2}``; lists of scalars stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
            flat[f"{name}.length"] = len(value)
            for index, item in enumerate(value):
                flat.update(flatten(item, f"{name}.{index}."))
        else:
            flat[name] = value
    return flat


def config_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs: ``{key: (recorded, current)}`` (a missing key reads as ``None``)."""
    old, new = flatten(recorded), flatten(current)
    keys = sorted(old.keys() | new.keys())
    return {key: (old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)}


def check_resume_config(
    recorded: Mapping[str, Any] | None, current: Mapping[str, Any], allowed: Collection[str] = ()
) -> None:
    """Accept ``current`` for resuming a run recorded with ``recorded`` only if every change is explicitly allowed.

    Raises:
        ValueError: An ``allowed`` key outside :data:`RESUMABLE_CHANGES`, no recorded config, or a change that
            is not allowed (the message lists each one as ``key: recorded -> now``).
    """
    unknown = sorted(set(allowed) - RESUMABLE_CHANGES)
    if unknown:
        raise ValueError(
            f"--allow-change {', '.join(unknown)}: not changeable on resume; "
            f"changeable keys: {', '.join(sorted(RESUMABLE_CHANGES))}"
        )
    if recorded is None:
        raise ValueError("--resume: the checkpoint records no config (saved by an older version); start afresh")
    changes = config_changes(recorded, current)
    refused = {key: values for key, values in changes.items() if key not in allowed}
    if refused:
        lines = "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        hint = [key for key in refused if key in RESUMABLE_CHANGES]
        extra = f"; to accept, pass --allow-change {' --allow-change '.join(hint)}" if hint else ""
        raise ValueError(
            f"--resume: the config differs from the checkpoint's (recorded -> now):\n{lines}\n"
            f"a resumed run keeps the recorded optimisation and data{extra}"
        )
