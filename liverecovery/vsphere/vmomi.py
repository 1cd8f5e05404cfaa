"""Typed shims over pyVmomi's untyped constructors, so the backend stays clean under mypy --strict.

pyVmomi ships stubs for the vSphere types, but its generated ``__init__`` methods (data objects,
managed object references) and ``pyVim.connect`` carry no annotations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from pyVmomi import vim

__all__ = ["managed_object", "new"]

D = TypeVar("D")
M = TypeVar("M", bound=vim.ManagedEntity)


def new(cls: type[D]) -> D:
    """An empty pyVmomi data object of ``cls``; set its fields afterwards."""
    return cls()


def managed_object(cls: type[M], moid: str, stub: object) -> M:
    """A reference to the managed object ``moid`` of type ``cls`` on the connection ``stub``."""
    make = cast(Callable[[str, object], M], cls)
    return make(moid, stub)
