"""Durable writes: a reader sees the old file or directory or the new one, never a half-written one.

Each helper writes to a temporary name beside the target, fsyncs the data, renames, then fsyncs the parent
directory so the rename itself survives a power cut (``os.replace`` alone only orders it in the page cache).

Every temporary name is :func:`staging_prefix` plus a random tag: it names this host and process, so a later
write in the same directory can tell the leftovers of a killed writer (:func:`remove_stale_staging`) from the
staging of one still running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())
# ``.<target>.tmp-<host>-<pid>-<8 random chars>[suffix]``; the random part as mkdtemp and token_hex make it.
_STAGING_NAME = re.compile(r"\..+\.tmp-(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)-[a-z0-9_]{8}(?:\.[A-Za-z0-9.]+)?")


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (renames, creations) to disk; a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and every directory's entries."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with (Path(root) / name).open("rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def publish_file(tmp: Path, path: Path) -> None:
    """Rename the finished file ``tmp`` to ``path``, with ``tmp`` synced before and the directory after."""
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def staging_prefix(target: Path) -> str:
    """The start of the hidden temporary names for ``target``: ``.<name>.tmp-<host>-<pid>-``."""
    return f".{target.name}.tmp-{_HOST}-{os.getpid()}-"


def remove_stale_staging(directory: Path) -> list[Path]:
    """Remove the temporary files and directories in ``directory`` that writers killed mid-save left behind.

    Only names of :func:`staging_prefix`'s form count, and only those of a process of this host that no longer
    exists: a live writer's staging (or a writer's on another host sharing the file system) is left alone. A
    recycled pid makes a leftover look live, which errs on the side of keeping it.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(directory.iterdir()):
            match = _STAGING_NAME.fullmatch(entry.name)
            if match is None or match["host"] != _HOST or _alive(int(match["pid"])):
                continue
            _remove(entry, missing_ok=True)  # a concurrent sweeper may have taken it first
            log.info("removed %s: staging left by process %s, which is gone (a killed save)", entry, match["pid"])
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def staged_file(path: Path, mode: str = "w", suffix: str = ".tmp") -> Iterator[IO]:
    """``path`` opened in ``mode`` under a temporary name; synced and renamed on success, removed on failure.

    Stale temporary files beside ``path`` are removed first (:func:`remove_stale_staging`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path.parent)
    tmp = path.with_name(f"{staging_prefix(path)}{secrets.token_hex(4)}{suffix}")
    try:
        with tmp.open(mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        publish_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    with staged_file(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: object) -> None:
    """:func:`write_bytes_atomic` for an indented JSON document (``NaN`` refused: it is not JSON)."""
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``target``, removed afterwards unless its content was moved away.

    Stale staging beside ``target`` (a killed writer's, see :func:`remove_stale_staging`) is removed first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(target), dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, target: Path) -> None:
    """Swap the finished directory ``tmp`` in for ``target`` (which may exist), synced before and after.

    POSIX cannot rename over a non-empty directory. On Linux the two are exchanged in one step
    (:func:`exchange_dirs`); elsewhere an old ``target`` is first renamed aside, and a kill between the two
    renames leaves no ``target`` but the old one complete under ``.<name>.old-*``, never a mixed one.
    """
    if target.is_dir() and exchange_dirs(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        return
    fsync_tree(tmp)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.replace(old / "old")
    tmp.replace(target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange_dirs(tmp: Path, target: Path) -> bool:
    """Atomically swap the directories ``tmp`` and ``target`` (both must exist), synced before and after.

    Linux's ``renameat2(RENAME_EXCHANGE)`` swaps two names in one step, so a kill at any moment leaves either
    the old or the new ``target``, never neither (which :func:`replace_dir`'s two renames can). The old content
    ends up at ``tmp``. Returns ``False``, having changed nothing, where the platform or file system lacks it.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    fsync_tree(tmp)
    if renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            return False
        raise OSError(err, os.strerror(err), str(target))
    fsync_dir(target.parent)
    return True


def move_files_into(tmp: Path, target: Path, *, last: Iterable[str] = ()) -> None:
    """Move ``tmp``'s entries into the existing directory ``target``, the ``last`` names after all others.

    For a model saved into a run directory that holds other things (checkpoints, logs): each entry is renamed
    atomically, the ``last`` ones (the files that make the directory loadable) are removed from ``target`` first
    and put back at the end, so a kill in between leaves a directory that does not load, never a mixed model.
    """
    fsync_tree(tmp)
    last = [name for name in last if (tmp / name).exists()]
    for name in last:
        _remove(target / name)
    fsync_dir(target)
    for entry in sorted(tmp.iterdir(), key=lambda path: path.name in last):
        _remove(target / entry.name)
        entry.replace(target / entry.name)
    fsync_dir(target)


def _remove(path: Path, *, missing_ok: bool = False) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=missing_ok)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
