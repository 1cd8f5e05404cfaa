"""A whole live recovery on the real path: our NFS server, the simulated ESX host, the FRE."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from liverecovery import Backends, LiveRecovery, RecoverySpec, Settings, State
from liverecovery.config import MiB
from liverecovery.datastore.builder import FreBuilder
from liverecovery.nfs.server import NfsServer
from liverecovery.sim.esx_host import SimulatedEsxHost
from liverecovery.testing import MemoryBlockCache, MemoryCatalog

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def settings(tmp: Path, **kw: object) -> Settings:
    return Settings(
        job_results_dir=tmp / "results",
        migration_trigger="delay",
        serve_before_migrate_s=0.3,
        nfs_address="127.0.0.1",
        compensation_retry_delay_s=0,
        progress_interval_s=0.05,
        **kw,  # type: ignore[arg-type]
    )


async def test_full_job_over_nfs_with_the_simulated_host(tmp_path: Path) -> None:
    catalog = MemoryCatalog()
    backup = catalog.add_vm("web01", disk_sizes=(64 * MiB, 16 * MiB), data_per_disk=3 * MiB)
    before = {n: d.sha256() for n, d in backup.disks.items()}
    cache = MemoryBlockCache()
    async with (
        NfsServer(tmp_path / "nfs-state") as server,
        SimulatedEsxHost(
            tmp_path / "esx",
            portmap_port=server.portmap_port,
            heartbeat_s=0.1,
            write_interval_s=0.005,
        ) as esx,
    ):
        backends = Backends(
            exporter=server, catalog=catalog, cache=cache, vsphere=esx, inventory=esx
        )
        builder = FreBuilder(cache)  # the durable on-disk overlay
        async with LiveRecovery(settings(tmp_path), backends, builder=builder) as lr:
            job = await lr.start(
                RecoverySpec(
                    vm="web01", esx_host="esx-sim", esx_address="127.0.0.1", datastore="datastore1"
                )
            )
            with anyio.fail_after(60):
                summary = await job.wait()
        assert summary.state is State.COMPLETED, summary.errors
        stats = job.stats
        assert stats.bytes_served > 0 and stats.bytes_restored == stats.bytes_to_restore
        assert stats.bytes_fetched <= 6 * MiB  # only allocated data ever came from the backup
        assert summary.vm_ref is not None
        # The recovered VM keeps running on its new datastore: stop its guest, or writes that
        # land after this snapshot of the write log make the disk differ from it.
        await esx.power_off(summary.vm_ref)
        writes = esx.guest_writes(summary.vm_ref)
        assert writes, "the guest wrote nothing"
        for index, (name, disk) in enumerate(sorted(backup.disks.items())):
            expected = bytearray(disk.content(0, disk.size))
            for w in writes:
                if w.disk == index:
                    expected[w.offset : w.offset + len(w.data)] = w.data
            path = esx.disk_path(summary.vm_ref, index)
            assert path is not None and path.read_bytes() == bytes(expected), name
        # Nothing left behind: no export, no mount, no overlay directory; backup unchanged.
        assert not server.exports() and not esx.mounts
        assert not (tmp_path / "results" / "jobs" / job.id).exists()
        assert {n: d.sha256() for n, d in backup.disks.items()} == before
        assert not cache.reservations()


async def test_flat_disk_handles_survive_a_server_restart(tmp_path: Path) -> None:
    """ESXi keeps using its handles: after a restart with the same state dir and the same job
    folder republished, the old handle of a -flat.vmdk reads the same bytes."""
    from liverecovery.datastore.flatdisk import FlatDisk
    from liverecovery.datastore.virtual import VirtualDatastore
    from liverecovery.nfs.client import NfsClient
    from liverecovery.nfs.localfs import LocalFilesystem
    from liverecovery.testing import MemoryDisk

    disk = MemoryDisk(8 * MiB, {0: b"\x5a" * MiB})
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "vm.vmx").write_text('displayName = "vm"\n')

    async def publish(server: NfsServer) -> None:
        flat = await FlatDisk.open(source="vm/0", reader=disk, cache=MemoryBlockCache())
        await server.export("/lr/h", ["127.0.0.1"])
        fs = VirtualDatastore(LocalFilesystem(tmp_path / "folder"), {"vm-flat.vmdk": flat})
        await server.publish("/lr/h", "vm-job", fs)

    async with NfsServer(tmp_path / "state") as server:
        await publish(server)
        async with await NfsClient.connect("127.0.0.1", server.port) as client:
            root = await client.mount("/lr/h")
            folder = await client.lookup_path(root, "vm-job")
            fh, _ = await client.lookup(folder, "vm-flat.vmdk")
            vmx, _ = await client.lookup(folder, "vm.vmx")
    async with NfsServer(tmp_path / "state") as server:
        await publish(server)
        async with await NfsClient.connect("127.0.0.1", server.port) as client:
            data, _ = await client.read(fh, 0, 4096)
            assert data == b"\x5a" * 4096
            text, _ = await client.read(vmx, 0, 100)
            assert text.startswith(b"displayName")
