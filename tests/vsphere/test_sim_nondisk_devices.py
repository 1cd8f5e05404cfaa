"""The simulated ESX host registers a VM with CD-ROM and passthrough devices, as ESXi does."""

from __future__ import annotations

from pathlib import Path

import pytest

from liverecovery.config import MiB
from liverecovery.datastore.flatdisk import FlatDisk
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from liverecovery.sim.esx_host import SimulatedEsxHost
from liverecovery.testing import MemoryBlockCache, MemoryDisk, MemoryOverlay

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SIZE = 4 * MiB
DESCRIPTOR = f"""# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

RW {SIZE // 512} VMFS "vm-flat.vmdk"
"""
VMX = """.encoding = "UTF-8"
displayName = "vm"
memSize = "64"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "vm.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.deviceType = "scsi-passthru"
scsi0:1.fileName = "/vmfs/devices/cdrom/mpx.vmhba32:C0:T0:L0"
ide1:0.present = "TRUE"
ide1:0.deviceType = "atapi-cdrom"
ide1:0.fileName = "/vmfs/devices/cdrom/mpx.vmhba0:C0:T0:L0"
sata0:0.present = "TRUE"
sata0:0.deviceType = "cdrom-raw"
sata0:0.fileName = "/vmfs/devices/cdrom/mpx.vmhba1:C0:T0:L0"
"""


async def test_register_skips_devices_that_are_not_disks(tmp_path: Path) -> None:
    inner = tmp_path / "overlay"
    inner.mkdir()
    (inner / "vm.vmx").write_text(VMX)
    (inner / "vm.vmdk").write_text(DESCRIPTOR)

    async def overlay() -> MemoryOverlay:
        return MemoryOverlay()

    flat = await FlatDisk.open(
        source="vm/0", reader=MemoryDisk(SIZE, {}), cache=MemoryBlockCache(), overlay=overlay
    )
    async with (
        NfsServer(tmp_path / "state") as server,
        SimulatedEsxHost(tmp_path / "esx", portmap_port=server.portmap_port) as esx,
    ):
        await server.export("/lr/esx-sim", ["127.0.0.1"])
        datastore = VirtualDatastore(LocalFilesystem(inner), {"vm-flat.vmdk": flat})
        await server.publish("/lr/esx-sim", "vm-job1", datastore)
        ds = await esx.mount_nfs_datastore("esx-sim", "127.0.0.1", "/lr/esx-sim", "lr")
        vm = await esx.register_vm("esx-sim", f"[{ds}] vm-job1/vm.vmx", "vm")
        assert [d.key for d in esx.vms[vm.moref].disks] == ["scsi0:0"]
        await esx.unregister_vm(vm)
