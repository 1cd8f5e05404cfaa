"""The simulated ESX host against our real NFS server and a virtual datastore."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from liverecovery.config import MiB
from liverecovery.datastore.flatdisk import DiskOverlay, FlatDisk
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.errors import VSphereError
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from liverecovery.sim.esx_host import _CHUNK, SimulatedEsxHost, _RegionLocks
from liverecovery.sim.remote import RemoteSimulatedHost, SimulatedHostServer
from liverecovery.testing import MemoryBlockCache, MemoryDisk, MemoryOverlay

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SIZE = 8 * MiB
DESCRIPTOR = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW {sectors} VMFS "vm-flat.vmdk"

ddb.adapterType = "lsilogic"
"""
VMX = """.encoding = "UTF-8"
displayName = "vm"
memSize = "64"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "vm.vmdk"
"""


async def memory_overlay() -> DiskOverlay:
    return MemoryOverlay()


async def publish_vm(
    server: NfsServer, tmp: Path, disk: MemoryDisk, *, sparse: bool = False
) -> VirtualDatastore:
    inner_dir = tmp / "overlay"
    inner_dir.mkdir()
    (inner_dir / "vm.vmx").write_text(VMX)
    desc = DESCRIPTOR.format(sectors=SIZE // 512)
    if sparse:
        desc = desc.replace("VMFS", "SPARSE")
    (inner_dir / "vm.vmdk").write_text(desc)
    flat = await FlatDisk.open(
        source="vm/0",
        reader=disk,
        cache=MemoryBlockCache(),
        overlay=memory_overlay,
    )
    await server.export("/lr/esx-sim", ["127.0.0.1"])
    datastore = VirtualDatastore(LocalFilesystem(inner_dir), {"vm-flat.vmdk": flat})
    await server.publish("/lr/esx-sim", "vm-job1", datastore)
    return datastore


@pytest.mark.parametrize("copy_depth", [1, 8])
async def test_mount_register_power_on_migrate_and_verify(tmp_path: Path, copy_depth: int) -> None:
    disk = MemoryDisk(SIZE, {0: b"\x11" * MiB, 5 * MiB: b"\x22" * 4096})
    async with (
        NfsServer(tmp_path / "state") as server,
        SimulatedEsxHost(
            tmp_path / "esx",
            portmap_port=server.portmap_port,
            heartbeat_s=0.05,
            write_interval_s=0.001 if copy_depth > 1 else 0.005,
            copy_depth=copy_depth,
        ) as esx,
    ):
        await publish_vm(server, tmp_path, disk)
        ds = await esx.mount_nfs_datastore("esx-sim", "127.0.0.1", "/lr/esx-sim", "lr-esx-sim")
        vm = await esx.register_vm("esx-sim", f"[{ds}] vm-job1/vm.vmx", "vm")
        await esx.power_on(vm)
        state = esx.vms[vm.moref]
        assert state.boot_bytes_read >= MiB
        overlay = tmp_path / "overlay"
        assert any(p.name.startswith(".lck-") for p in overlay.iterdir())
        assert b"Powering on" in (overlay / "vmware.log").read_bytes()
        assert (overlay / "vm.vswp").stat().st_size == 64 * MiB
        await anyio.sleep(0.3)
        assert esx.mounts[ds].heartbeats > 0
        seen: list[tuple[int, int]] = []
        moved = await esx.relocate(vm, "datastore1", lambda d, t: seen.append((d, t)))
        assert moved.vmx_path == "[datastore1] vm/vm.vmx" and seen[-1] == (SIZE, SIZE)
        await anyio.sleep(0.05)  # the guest keeps writing, now to the local copy
        with pytest.raises(VSphereError, match="powered on") as caught:
            await esx.unregister_vm(moved)
        assert caught.value.fault == "InvalidPowerState"
        await esx.power_off(moved)
        # The destination disk equals the backup with every guest write applied, in order.
        expected = bytearray(disk.content(0, SIZE))
        for w in esx.guest_writes(moved):
            expected[w.offset : w.offset + len(w.data)] = w.data
        assert len(esx.guest_writes(moved)) > 5
        path = esx.disk_path(moved, 0)
        assert path is not None and path.read_bytes() == bytes(expected)
        assert not esx.vms[moved.moref].disks[0].regions  # no chunk lock outlives the copy
        # Source files were deleted on the NFS datastore; the unmount goes through.
        assert not any(p.name.startswith(".lck-") for p in overlay.iterdir())
        await esx.unregister_vm(moved)
        await esx.unmount_datastore("esx-sim", ds)
        assert not esx.mounts


async def test_register_refuses_a_sparse_extent(tmp_path: Path) -> None:
    disk = MemoryDisk(SIZE, {})
    async with (
        NfsServer(tmp_path / "state") as server,
        SimulatedEsxHost(tmp_path / "esx", portmap_port=server.portmap_port) as esx,
    ):
        await publish_vm(server, tmp_path, disk, sparse=True)
        ds = await esx.mount_nfs_datastore("esx-sim", "127.0.0.1", "/lr/esx-sim", "lr")
        with pytest.raises(VSphereError, match="SPARSE extents; ESXi needs flat") as caught:
            await esx.register_vm("esx-sim", f"[{ds}] vm-job1/vm.vmx", "vm")
        assert caught.value.fault == "InvalidDiskFormat"


async def test_mount_refused_for_a_disallowed_client(tmp_path: Path) -> None:
    async with (
        NfsServer(tmp_path / "state") as server,
        SimulatedEsxHost(tmp_path / "esx", portmap_port=server.portmap_port) as esx,
    ):
        await server.export("/lr/esx-sim", ["10.9.9.9"])
        await server.export("/lr/other", ["127.0.0.1"])  # kept connected: MNT refuses
        with pytest.raises(VSphereError, match="NFS mount") as caught:
            await esx.mount_nfs_datastore("esx-sim", "127.0.0.1", "/lr/esx-sim", "lr")
        assert caught.value.fault == "PlatformConfigFault" and not esx.mounts


async def test_heartbeats_mark_a_dead_server_inaccessible(tmp_path: Path) -> None:
    async with SimulatedEsxHost(
        tmp_path / "esx", heartbeat_s=0.05, heartbeat_misses=2, apd_timeout_s=0.5
    ) as esx:
        async with NfsServer(tmp_path / "state") as server:
            esx.portmap_port = server.portmap_port
            await server.export("/lr/esx-sim", ["127.0.0.1"])
            ds = await esx.mount_nfs_datastore("esx-sim", "127.0.0.1", "/lr/esx-sim", "lr")
            await anyio.sleep(0.2)
            assert esx.mounts[ds].accessible
        with anyio.fail_after(5):
            while esx.mounts[ds].accessible:
                await anyio.sleep(0.05)
        with pytest.raises(VSphereError, match="inaccessible"):
            await esx.register_vm("esx-sim", f"[{ds}] x/vm.vmx", "vm")


async def test_a_running_vm_rides_out_a_restart_of_the_server(tmp_path: Path) -> None:
    """As ESXi's hard mount: the guest's I/O stalls while the server is gone (the datastore
    turns inaccessible), resumes against the restarted server on the same port with the same
    handles, and no guest write is lost."""
    disk = MemoryDisk(SIZE, {0: b"\x33" * MiB})
    async with SimulatedEsxHost(
        tmp_path / "esx", heartbeat_s=0.05, heartbeat_misses=2, write_interval_s=0.005
    ) as esx:
        async with NfsServer(tmp_path / "state") as server:
            port = esx.portmap_port = server.portmap_port
            datastore = await publish_vm(server, tmp_path, disk)
            ds = await esx.mount_nfs_datastore("esx-sim", "127.0.0.1", "/lr/esx-sim", "lr")
            vm = await esx.register_vm("esx-sim", f"[{ds}] vm-job1/vm.vmx", "vm")
            await esx.power_on(vm)
            await anyio.sleep(0.1)
        before = len(esx.guest_writes(vm))
        with anyio.fail_after(5):
            while esx.mounts[ds].accessible:
                await anyio.sleep(0.02)
        await anyio.sleep(0.2)
        assert len(esx.guest_writes(vm)) <= before + 1  # stalled, not failed
        async with NfsServer(tmp_path / "state", port=port) as again:
            await again.export("/lr/esx-sim", ["127.0.0.1"])
            await again.publish("/lr/esx-sim", "vm-job1", datastore)
            with anyio.fail_after(10):
                while len(esx.guest_writes(vm)) < before + 20:
                    await anyio.sleep(0.02)
            assert esx.mounts[ds].client.reconnects >= 1
            assert esx.vms[vm.moref].io_error == ""
            moved = await esx.relocate(vm, "datastore1")
            await esx.power_off(moved)
        expected = bytearray(disk.content(0, SIZE))
        for w in esx.guest_writes(moved):
            expected[w.offset : w.offset + len(w.data)] = w.data
        path = esx.disk_path(moved, 0)
        assert path is not None and path.read_bytes() == bytes(expected)


async def test_the_host_served_to_another_process_keeps_faults_and_vms(tmp_path: Path) -> None:
    """``RemoteSimulatedHost`` over the unix socket: results, faults (with their names) and a
    whole register / power-on / relocate cycle, as the crash tests drive it."""
    disk = MemoryDisk(SIZE, {0: b"\x44" * MiB})
    async with (
        NfsServer(tmp_path / "state") as server,
        SimulatedEsxHost(tmp_path / "esx", write_interval_s=0.005) as esx,
        anyio.create_task_group() as tg,
    ):
        await tg.start(SimulatedHostServer(esx, tmp_path / "esx.sock").serve)
        remote = RemoteSimulatedHost(tmp_path / "esx.sock", call_timeout=20)
        await remote.set_portmap_port(server.portmap_port)
        await publish_vm(server, tmp_path, disk)
        with pytest.raises(VSphereError) as caught:
            await remote.nfs_datastores("nope")
        assert caught.value.fault == "NotFound"
        ds = await remote.mount_nfs_datastore("esx-sim", "127.0.0.1", "/lr/esx-sim", "lr")
        assert await remote.nfs_datastores("esx-sim") == [ds]
        vm = await remote.register_vm("esx-sim", f"[{ds}] vm-job1/vm.vmx", "vm")
        assert await remote.find_vm(vm.vmx_path) == vm and await remote.vms() == [vm]
        await remote.power_on(vm)
        assert await remote.power_state(vm) == "poweredOn"
        seen: list[tuple[int, int]] = []
        moved = await remote.relocate(vm, "datastore1", lambda d, t: seen.append((d, t)))
        assert seen[-1] == (SIZE, SIZE) and moved.vmx_path == "[datastore1] vm/vm.vmx"
        await remote.power_off(moved)
        writes = await remote.guest_writes(moved)
        assert writes == esx.guest_writes(moved)
        assert await remote.disk_path(moved, 0) == esx.disk_path(moved, 0)
        with pytest.raises(VSphereError) as caught:
            await remote.power_off(moved)
        assert caught.value.fault == "InvalidPowerState"
        await remote.unregister_vm(moved)
        with pytest.raises(VSphereError) as caught:
            await remote.power_state(moved)
        assert caught.value.fault == "ManagedObjectNotFound"
        await remote.unmount_datastore("esx-sim", ds)
        tg.cancel_scope.cancel()


async def test_region_locks_serialize_overlapping_chunks_only() -> None:
    regions = _RegionLocks()
    order: list[str] = []

    async def take(name: str, start: int, end: int, hold_s: float) -> None:
        async with regions.hold(start, end):
            order.append(f"{name}+")
            await anyio.sleep(hold_s)
            order.append(f"{name}-")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "a", 0, 1, 0.05)  # chunk 0
            await anyio.sleep(0.01)
            tg.start_soon(take, "b", _CHUNK - 1, _CHUNK + 1, 0)  # chunks 0 and 1: waits for a
            tg.start_soon(take, "c", 2 * _CHUNK, 2 * _CHUNK + 4096, 0)  # chunk 2: does not
            await anyio.sleep(0.02)
            assert order == ["a+", "c+", "c-"]
            assert len(regions) == 1  # chunk 0, held by a and awaited by b; b takes 1 later
    assert order == ["a+", "c+", "c-", "a-", "b+", "b-"]
    assert not len(regions)


async def test_region_locks_forget_a_waiter_that_was_cancelled() -> None:
    regions = _RegionLocks()

    async def impatient() -> None:
        with anyio.move_on_after(0.02):
            async with regions.hold(10, 20):
                pytest.fail("took a chunk that was held")

    with anyio.fail_after(5):
        async with regions.hold(0, _CHUNK):
            async with anyio.create_task_group() as tg:
                tg.start_soon(impatient)
            assert len(regions) == 1
    assert not len(regions)
