"""The embedded default environment: everything a live recovery needs, in this process.

Our NFS server on loopback (OS-chosen port, portmapper on the same port), the simulated ESX host
mounting from it over TCP, the File Recovery Enabler building each job's virtual datastore with
the on-disk circular cache and durable write overlays. Used
by ``liverecovery demo``, by tests, and by anyone who wants to try a backup without vSphere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs

from liverecovery.backends import Backends, BlockCache, CatalogReader, DiskReader, VmRef
from liverecovery.config import MiB, Settings
from liverecovery.datastore.builder import FreBuilder, OverlayFactory, durable_overlay
from liverecovery.nfs.server import NfsServer
from liverecovery.recovery.assembly import assemble
from liverecovery.sim.esx_host import GuestWrite, SimulatedEsxHost
from liverecovery.spec import RecoverySpec

__all__ = ["Embedded", "embedded_environment", "loopback_settings", "verify_disk"]

ESX_HOST = "esx-sim"
DESTINATION = "datastore1"


@attrs.frozen
class Embedded:
    """A running embedded environment."""

    settings: Settings
    backends: Backends
    builder: FreBuilder
    server: NfsServer
    esx: SimulatedEsxHost

    def spec(self, vm: str, **kw: object) -> RecoverySpec:
        """A spec recovering ``vm`` onto the simulated host's local datastore."""
        kw.setdefault("esx_host", ESX_HOST)
        kw.setdefault("esx_address", "127.0.0.1")
        kw.setdefault("datastore", DESTINATION)
        return RecoverySpec(vm=vm, **kw)  # type: ignore[arg-type]


def loopback_settings(settings: Settings | None, work_dir: Path) -> Settings:
    """``settings`` (default: results under ``work_dir``) with our NFS server on loopback: one
    OS-chosen port for NFS, MOUNT and the portmapper, no grace period. Every embedded
    environment uses it, whatever the settings say."""
    return attrs.evolve(
        settings or Settings(job_results_dir=work_dir / "results"),
        nfs_address="127.0.0.1",
        nfs_listen_host="127.0.0.1",
        nfs_port=0,
        portmap_port=0,
        nfs_grace_s=0.0,
    )


@asynccontextmanager
async def embedded_environment(
    work_dir: Path,
    catalog: CatalogReader,
    *,
    settings: Settings | None = None,
    cache: BlockCache | None = None,
    overlay_factory: OverlayFactory | None = None,
    write_interval_s: float = 0.01,
) -> AsyncIterator[Embedded]:
    """Start the NFS server and the simulated ESX host under ``work_dir``; stop them after.

    The parts come from ``liverecovery.recovery.assembly``, with the NFS server on loopback
    (one OS-chosen port for NFS, MOUNT and the portmapper, no grace period) whatever the
    settings say.
    """
    settings = loopback_settings(settings, work_dir)
    esx = SimulatedEsxHost(
        work_dir / "esx",
        name=ESX_HOST,
        local_datastores=(DESTINATION,),
        write_interval_s=write_interval_s,
    )

    async with assemble(
        settings,
        vsphere=esx.mounting_from,
        catalog=catalog,
        cache=cache,
        overlay_factory=overlay_factory or durable_overlay,
        nfs_state_dir=work_dir / "nfs-state",
    ) as parts:
        yield Embedded(parts.settings, parts.backends, parts.builder, parts.server, esx)


async def verify_disk(
    esx: SimulatedEsxHost, vm: VmRef, index: int, backup: DiskReader, writes: Sequence[GuestWrite]
) -> bool:
    """Whether the migrated disk ``index`` equals the backup with the guest's writes applied."""
    path = esx.disk_path(vm, index)
    if path is None:
        return False
    mine = [w for w in writes if w.disk == index]
    chunk = 4 * MiB
    with open(path, "rb") as f:  # noqa: ASYNC230 - a local verification read
        for offset in range(0, backup.size, chunk):
            expected = bytearray(await backup.read(offset, chunk))
            end = offset + len(expected)
            for w in mine:
                lo, hi = max(w.offset, offset), min(w.offset + len(w.data), end)
                if lo < hi:
                    expected[lo - offset : hi - offset] = w.data[lo - w.offset : hi - w.offset]
            if f.read(len(expected)) != expected:
                return False
        return f.read(1) == b""
