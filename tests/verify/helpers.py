"""In-memory worlds for the verification tests: a VM whose disk holds a partition table."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from liverecovery import RecoverySpec, Settings
from liverecovery.config import MiB
from liverecovery.testing import memory_backends
from liverecovery.testing.disk_images import mbr_disk
from liverecovery.testing.memory import (
    MemoryBlockCache,
    MemoryCatalog,
    MemoryDisk,
    MemoryExporter,
    MemoryVSphere,
)
from liverecovery.verify.run import VerifyOptions

HOST = "esx01"
DISK = 64 * MiB
BOOTABLE = mbr_disk([(0x83, 2048, 40960, "ext4"), (0x82, 43008, 20480, "swap")])
"""An MBR with an ext4 root and a swap partition."""


def settings(**kw: Any) -> Settings:
    kw.setdefault("job_results_dir", tempfile.mkdtemp(prefix="lr-verify-"))
    kw.setdefault("migration_trigger", "delay")
    return Settings(compensation_retry_delay_s=0, **kw)


def spec(vm: str = "web01", **kw: Any) -> RecoverySpec:
    kw.setdefault("esx_host", HOST)
    kw.setdefault("datastore", "datastore1")
    return RecoverySpec(vm=vm, **kw)


def options(**kw: Any) -> VerifyOptions:
    kw.setdefault("poll_s", 0.01)
    return VerifyOptions(**kw)


class World:
    """In-memory backends holding VM ``web01`` (bootable disk) and ``blank01`` (no table)."""

    def __init__(self) -> None:
        self.backends, self.faults = memory_backends()
        assert isinstance(self.backends.exporter, MemoryExporter)
        assert isinstance(self.backends.vsphere, MemoryVSphere)
        assert isinstance(self.backends.cache, MemoryBlockCache)
        assert isinstance(self.backends.catalog, MemoryCatalog)
        self.exporter: MemoryExporter = self.backends.exporter
        self.vsphere: MemoryVSphere = self.backends.vsphere
        self.cache: MemoryBlockCache = self.backends.cache
        self.catalog: MemoryCatalog = self.backends.catalog
        backup = self.catalog.add_vm("web01", disk_sizes=(DISK,))
        backup.disks["web01_0.vmdk"] = MemoryDisk(DISK, BOOTABLE)
        self.catalog.add_vm("blank01", disk_sizes=(DISK,), data_per_disk=0)
        self.vsphere.networks.add("isolated-test")

    def leftovers(self) -> dict[str, object]:
        """Everything a verification could leave behind in the backends."""
        return {
            "exports": dict(self.exporter.exports()),
            "published": list(self.exporter.published),
            "mounts": {h: m for h, m in self.vsphere.datastores.items() if m},
            "vms": [v.ref.name for v in self.vsphere.vms.values()],
            "reservations": dict(self.cache.reservations()),
        }


def jobs_dir_empty(settings: Settings) -> bool:
    """Nothing is left of any job's folder (overlays, the VM folder) under the results."""
    jobs = Path(settings.job_results_dir) / "jobs"
    return not jobs.exists() or not any(jobs.iterdir())


def read_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "report.json").read_text())
    return data
