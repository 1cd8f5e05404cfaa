"""Helpers shared by the job tests."""

from __future__ import annotations

import tempfile
from typing import Any

import anyio

from liverecovery import RecoverySpec, Settings, StateChanged, Timeouts
from liverecovery.job.job import RecoveryJob
from liverecovery.job.states import State
from liverecovery.testing import FaultPlan, memory_backends
from liverecovery.testing.memory import (
    MemoryBlockCache,
    MemoryCatalog,
    MemoryExporter,
    MemoryVSphere,
)

HOST = "esx01"

STEP_CALL: dict[State, str] = {
    State.PREFLIGHT: "catalog.restore_point",
    State.EXPORTING: "exporter.export",
    State.MOUNTING: "vsphere.mount_nfs_datastore",
    State.STAGING: "exporter.publish",
    State.REGISTERING: "vsphere.register_vm",
    State.POWERING_ON: "vsphere.power_on",
    State.MIGRATING: "vsphere.relocate",
    State.CLEANING_UP: "exporter.unpublish",
}
"""A backend call made in each step state (cleanup's first compensation for cleaning_up)."""

STEP_COMPENSATION: dict[State, str] = {
    State.PREFLIGHT: "release_cache_reservation",
    State.EXPORTING: "unexport",
    State.MOUNTING: "unmount",
    State.STAGING: "unpublish",
    State.REGISTERING: "unregister",
    State.POWERING_ON: "power_off",
}


def expected_rollback(failed_in: State) -> list[str]:
    """The compensations a rollback from ``failed_in`` must run, in order."""
    order = list(STEP_COMPENSATION)
    done = order[: order.index(failed_in)] if failed_in in order else order
    return [STEP_COMPENSATION[s] for s in reversed(done)]


def fast_settings(**kw: Any) -> Settings:
    kw.setdefault("migration_trigger", "delay")
    kw.setdefault("job_results_dir", tempfile.mkdtemp(prefix="lr-test-"))
    return Settings(compensation_retry_delay_s=0, **kw)


def spec(vm: str = "web01", **kw: Any) -> RecoverySpec:
    kw.setdefault("esx_host", HOST)
    kw.setdefault("datastore", "datastore1")
    return RecoverySpec(vm=vm, **kw)


class World:
    """In-memory backends with typed access for assertions."""

    def __init__(self, **kw: Any) -> None:
        self.backends, self.faults = memory_backends(**kw)
        assert isinstance(self.backends.exporter, MemoryExporter)
        assert isinstance(self.backends.vsphere, MemoryVSphere)
        assert isinstance(self.backends.cache, MemoryBlockCache)
        assert isinstance(self.backends.catalog, MemoryCatalog)
        self.exporter: MemoryExporter = self.backends.exporter
        self.vsphere: MemoryVSphere = self.backends.vsphere
        self.cache: MemoryBlockCache = self.backends.cache
        self.catalog: MemoryCatalog = self.backends.catalog

    def leftovers(self) -> dict[str, object]:
        """Everything a finished, un-migrated job could have left behind."""
        return {
            "exports": dict(self.exporter.exports()),
            "published": list(self.exporter.published),
            "mounts": {h: m for h, m in self.vsphere.datastores.items() if m},
            "vms": [v.ref.name for v in self.vsphere.vms.values() if not v.migrated],
            "reservations": dict(self.cache.reservations()),
        }

    def clean(self) -> bool:
        return not any(self.leftovers().values())


__all__ = [
    "HOST",
    "STEP_CALL",
    "STEP_COMPENSATION",
    "FaultPlan",
    "Timeouts",
    "World",
    "expected_rollback",
    "fast_settings",
    "spec",
]


async def reach(job: RecoveryJob, state: State, timeout_s: float = 5.0) -> None:
    """Return once ``job`` enters ``state`` (or its events end), failing after ``timeout_s``."""
    with anyio.fail_after(timeout_s):
        async for event in job.events():
            if isinstance(event, StateChanged) and event.state is state:
                return
