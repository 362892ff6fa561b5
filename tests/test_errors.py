import inspect

import pytest

from piccolo_embed import errors
from piccolo_embed.cli import main

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
# Where each error was defined before errors.py; importing it from there must keep working.
OLD_HOMES = {
    "piccolo_embed.textfiles": ["EncodingError"],
    "piccolo_embed.data.records": ["RecordError"],
    "piccolo_embed.training.config": ["ConfigError"],
    "piccolo_embed.training.checkpoint": ["CheckpointError"],
    "piccolo_embed.modeling.merge": ["MergeError"],
    "piccolo_embed.modeling.loading": ["ModelLoadError"],
    "piccolo_embed.parallel.pool": ["WorkerError"],
    "piccolo_embed.integrations.remote": ["RemoteError"],
    "piccolo_embed.evaluation": ["TaskFormatError"],
    "piccolo_embed.index": ["ModelMismatchError", "IndexLockedError", "IndexNotFoundError", "CorruptIndexError"],
    "piccolo_embed.index.store": ["IncompleteIndexError"],
}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_has_the_root_and_a_one_line_docstring(cls):
    assert issubclass(cls, errors.PiccoloEmbedError)
    assert cls.__doc__ and "\n" not in cls.__doc__.strip()


def test_old_import_paths_give_the_same_classes():
    import importlib

    for module, names in OLD_HOMES.items():
        for name in names:
            assert getattr(importlib.import_module(module), name) is getattr(errors, name), f"{module}.{name}"


def test_built_in_bases_are_kept_for_existing_handlers():
    assert issubclass(errors.RecordError, ValueError)
    assert issubclass(errors.IndexNotFoundError, FileNotFoundError)
    assert issubclass(errors.IncompleteIndexError, errors.IndexNotFoundError)
    assert issubclass(errors.WorkerError, RuntimeError)
    assert issubclass(errors.HubUnreachableError, ConnectionError)


def test_cli_prints_any_of_our_errors_as_one_line(monkeypatch, capsys):
    import piccolo_embed.cli.search as search

    def fail(args):
        raise errors.WorkerError("worker 1 died while encoding")

    monkeypatch.setattr(search, "run", fail)
    assert main(["search", "--index", "idx", "q"]) == 2
    assert capsys.readouterr().err == "piccolo-embed search: error: worker 1 died while encoding\n"
