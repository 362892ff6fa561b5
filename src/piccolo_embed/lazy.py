"""Package attributes that import their module on first use (PEP 562), so light imports stay light.

``piccolo-embed --help`` imports every subcommand's module; a package ``__init__`` that eagerly imported torch,
transformers or scipy would make that take seconds. The standard library has no helper for this (``importlib.util.
LazyLoader`` defers whole modules, not names), hence this one function.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that resolves ``name`` from the module ``exports[name]`` and caches it.

    Args:
        package: The ``__name__`` of the package whose attributes these are.
        exports: Attribute name -> dotted module that defines it.
    """

    def attribute(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return attribute
