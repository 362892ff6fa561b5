"""Every error piccolo-embed raises on purpose, under one root, in one place (as httpx does).

``except PiccoloEmbedError`` catches ours and nothing else; each class also keeps the built-in base callers caught
before the root existed (``ValueError`` for bad input, ``OSError`` for files, ...). The modules that raise them
re-export them, so ``from piccolo_embed.index import IndexNotFoundError`` keeps working. The serving package keeps
its queue and HTTP errors next to the batcher, which maps them to status codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class PiccoloEmbedError(Exception):
    """Root of the errors piccolo-embed raises; the message is meant for the user as is."""


class EncodingError(PiccoloEmbedError, ValueError):
    """A file is not valid UTF-8; the message names the file, line and column (1-based, in bytes)."""

    def __init__(self, path: Path, line: int, column: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: not valid UTF-8 at byte {column} of the line ({reason})")
        self.path, self.line, self.column = path, line, column


class RecordError(PiccoloEmbedError, ValueError):
    """A malformed training or mining record; the message names the file, the line and the field."""

    def __init__(self, path: str | Path, line: int, field_name: str, reason: str) -> None:
        self.path, self.line, self.field, self.reason = str(path), line, field_name, reason
        super().__init__(f"{path}:{line}: field {field_name!r}: {reason}")


class TaskFormatError(PiccoloEmbedError, ValueError):
    """An evaluation task folder, file or line does not follow the format; names file, line and field."""

    def __init__(self, path: Path, problem: str, *, line: int | None = None, field: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        what = f"field {field!r}: " if field is not None else ""
        super().__init__(f"{where}: {what}{problem}")
        self.path = path
        self.line = line
        self.field = field


class ConfigError(PiccoloEmbedError, ValueError):
    """A configuration key or value is invalid; the message names its dotted path."""


class CheckpointError(PiccoloEmbedError, ValueError):
    """A checkpoint directory is incomplete, corrupt, or in a format this version does not read."""


class ModelLoadError(PiccoloEmbedError, OSError):
    """A model could not be found or loaded; the message says what to do instead."""


class MergeError(PiccoloEmbedError, ValueError):
    """Models cannot be merged, or the arguments are wrong; the message names the model and the first mismatch."""


class ModelMismatchError(PiccoloEmbedError, ValueError):
    """The encoder is not the one the index was built with."""


class IndexLockedError(PiccoloEmbedError, OSError):
    """Another process is building or appending to the same index."""


class IndexNotFoundError(PiccoloEmbedError, FileNotFoundError):
    """No committed index in the directory."""


class IncompleteIndexError(IndexNotFoundError):
    """A build was interrupted before its first commit; rerunning it resumes."""


class CorruptIndexError(PiccoloEmbedError, ValueError):
    """The manifest promises more data than the files hold."""


class DuplicateIdError(PiccoloEmbedError, ValueError):
    """A passage id is already in the index or earlier in the corpus."""


class EmptyCorpusError(PiccoloEmbedError, ValueError):
    """The corpus holds no passages."""


class WorkerError(PiccoloEmbedError, RuntimeError):
    """A worker process failed to load its model, failed to encode, or died."""


class RemoteError(PiccoloEmbedError, RuntimeError):
    """The server refused a request or could not be reached; the message says which, and why."""


class HubUnreachableError(PiccoloEmbedError, ConnectionError):
    """An mteb task's data could not be fetched from the Hugging Face hub."""
