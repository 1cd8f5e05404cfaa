"""Fault injection around any backend, real or in-memory.

``faulty(client, plan, "vsphere")`` returns a proxy whose every coroutine method first calls
``plan.hit("vsphere.<method>")``, so a test can make a real backend (the pyvmomi client against
the govmomi simulator, our NFS server, the simulated ESX host) fail, hang or slow down at any
call while everything else is real.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

from liverecovery.testing.faults import FaultPlan

__all__ = ["faulty"]

T = TypeVar("T")


class _Faulty:
    def __init__(self, inner: Any, plan: FaultPlan, name: str) -> None:
        self._inner = inner
        self._plan = plan
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if attr == "aclose" or not inspect.iscoroutinefunction(value):
            return value

        @functools.wraps(value)
        async def call(*args: Any, **kwargs: Any) -> Any:
            await self._plan.hit(f"{self._name}.{attr}")
            return await value(*args, **kwargs)

        return call


def faulty(backend: T, plan: FaultPlan, name: str) -> T:
    """A proxy of ``backend`` that applies ``plan`` before each of its coroutine methods."""
    proxy: Any = _Faulty(backend, plan, name)
    return proxy  # type: ignore[no-any-return]
