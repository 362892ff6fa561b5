"""Atomic file and directory replacement."""

from __future__ import annotations

from pathlib import Path

import pytest

from piccolo_embed.atomic import exchange_dirs, move_files_into, replace_dir, staging_dir, write_json_atomic


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
