"""Atomic file and directory replacement."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from piccolo_embed.atomic import (
    exchange_dirs,
    move_files_into,
    remove_stale_staging,
    replace_dir,
    staging_dir,
    staging_prefix,
    write_json_atomic,
)
from piccolo_embed.data.records import TripletRecord, write_records

SRC = Path(__file__).parents[1] / "src"


def test_write_json_atomic_replaces_and_refuses_nan(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_json_atomic(path, {"x": 1})
    write_json_atomic(path, {"x": 2})
    assert path.read_text() == '{\n  "x": 2\n}\n'
    with pytest.raises(ValueError, match="JSON"):
        write_json_atomic(path, {"x": float("nan")})
    assert path.read_text() == '{\n  "x": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_replace_dir_swaps_a_whole_directory(tmp_path: Path) -> None:
    target = tmp_path / "best"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staging_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        replace_dir(tmp, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_move_files_into_puts_the_markers_last_and_keeps_other_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "run"
    (target / "checkpoints").mkdir(parents=True)
    (target / "config.json").write_text("old")
    order: list[str] = []
    with staging_dir(target) as tmp:
        for name in ("config.json", "model.safetensors", "a.txt"):
            (tmp / name).write_text("new")
        real = Path.replace

        def spy(self: Path, other: Path) -> Path:
            order.append(self.name)
            return real(self, other)

        monkeypatch.setattr(Path, "replace", spy)
        move_files_into(tmp, target, last=["config.json"])
        monkeypatch.undo()
    assert order[-1] == "config.json"
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "checkpoints", "config.json", "model.safetensors"]
    assert (target / "config.json").read_text() == "new"


def test_exchange_dirs_swaps_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "model", tmp_path / ".model.tmp"
    old.mkdir()
    new.mkdir()
    (old / "w").write_text("old")
    (new / "w").write_text("new")
    renames: list[str] = []
    monkeypatch.setattr(Path, "replace", lambda self, other: renames.append(self.name))
    assert exchange_dirs(new, old)
    assert (old / "w").read_text() == "new" and (new / "w").read_text() == "old"
    replace_dir(old, new)  # the swap back goes through the exchange too: no two-rename window
    assert (new / "w").read_text() == "new" and not old.exists() and renames == []


def _killed_mid_save(target: Path) -> list[str]:
    """Names a process left beside ``target`` after a SIGKILL inside a directory save and two file saves."""
    script = f"""
        import os, signal
        from pathlib import Path
        from piccolo_embed.atomic import staged_file, staging_dir
        target = Path({str(target)!r})
        with staging_dir(target) as tmp, staged_file(target.with_name("probes.npy"), "wb") as handle:
            (tmp / "model.safetensors").write_bytes(b"half")
            handle.write(b"half")
            with staged_file(target.with_name("ids.jsonl")):
                os.kill(os.getpid(), signal.SIGKILL)
    """
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, check=False)
    assert proc.returncode == -9
    return sorted(path.name for path in target.parent.iterdir())


def test_the_next_save_removes_what_a_killed_save_left(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "model"
    left = _killed_mid_save(target)
    assert len(left) == 3 and all(
        name.startswith((".model.tmp-", ".probes.npy.tmp-", ".ids.jsonl.tmp-")) for name in left
    )
    with caplog.at_level(logging.INFO), staging_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
        replace_dir(tmp, target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    assert all(f"removed {tmp_path / name}" in caplog.text for name in left)


def test_a_live_writers_staging_and_names_not_ours_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "model"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ours = staging_prefix(target)
        others = [
            ours.replace(f"-{os.getpid()}-", f"-{live.pid}-") + "abcd1234",  # a live writer's directory
            ours + "abcd1234.tmp",  # this process's own file
            ours.replace(".tmp-", ".tmp-otherhost-", 1).replace(f"-{os.getpid()}-", f"-{2**22 + 1}-") + "abcd1234",
            ".model.tmp-abcd1234",  # an older version's name, or someone else's: no pid to check
            "model.tmp-x-1-abcd1234",  # not hidden
        ]
        for name in others:
            (tmp_path / name).mkdir()
        write_records(tmp_path / "mined.jsonl", [TripletRecord("q", ("p",))])
        assert remove_stale_staging(tmp_path) == []
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*others, "mined.jsonl"])
    finally:
        live.kill()
        live.wait()
    assert remove_stale_staging(tmp_path) == [tmp_path / others[0]]  # its writer is gone now
