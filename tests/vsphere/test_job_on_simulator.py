"""Whole jobs through ``LiveRecovery`` with the pyvmomi backend against the govmomi simulator and
our real NFS server.

ESXi reads a VM's folder from the NFS server when the VM is registered; the simulator keeps a
NAS datastore's files in a local directory instead, so its launcher (tests/vcsim/nfs.go) fills
that directory from our export through a real NFS client (libnfs' nfs-ls/nfs-cp) at
registration, once the host option ``vcsim.nfs.port`` names our server's port. No file is placed
by hand: power-on, serving, the storage vMotion and cleanup run to ``completed``.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from pyVmomi import vim

from liverecovery import LiveRecovery, RecoverySpec, Settings, State
from liverecovery.errors import VSphereError
from liverecovery.job.migration import ManualMigration
from liverecovery.job.sharing import datastore_name_for
from liverecovery.testing import FaultPlan, MemoryBlockCache, MemoryCatalog, faulty
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

from .conftest import HOST, LOCAL_DS, Inventory, Simulator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def serve_nfs_to_simulator(inventory: Inventory, port: int) -> None:
    """tests/vcsim's hook: the host reads NAS datastores from the NFS server on ``port``."""
    options = inventory.host().configManager.advancedOption
    options.UpdateValues([vim.option.OptionValue(key="vcsim.nfs.port", value=str(port))])


def settings(tmp: Path) -> Settings:
    return Settings(
        job_results_dir=tmp,
        migration_trigger="delay",
        compensation_retry_delay_s=0,
        migration_backoff_s=0.1,
        nfs_address="127.0.0.1",
        nfs_listen_host="127.0.0.1",
        nfs_port=0,
        portmap_port=0,
        job_space_floor_bytes=0,
    )


def catalog(vm: str) -> MemoryCatalog:
    found = MemoryCatalog()
    found.add_vm(vm, disk_sizes=(16 << 20,), data_per_disk=1 << 20)
    return found


def spec(vm: str) -> RecoverySpec:
    return RecoverySpec(vm=vm, esx_host=HOST, datastore=LOCAL_DS, esx_address="127.0.0.1")


async def test_full_job_reads_the_vm_folder_over_nfs(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    before = inventory.snapshot()
    mirror = simulator.nfs_root / datastore_name_for(HOST)
    async with LiveRecovery.from_settings(
        settings(tmp_path),
        vsphere=vsphere,
        catalog=catalog("sim-full"),
        cache=MemoryBlockCache(),
        migration_policy=ManualMigration(),
    ) as lr:
        assert lr.assembly is not None
        serve_nfs_to_simulator(inventory, lr.assembly.server.port)
        job = await lr.start(spec("sim-full"))
        while job.state is not State.SERVING:
            assert not job.done, job.errors
            await anyio.sleep(0.01)
        # What the simulator registered came over NFS: the .vmx as our export serves it, and
        # the vmware.log it created on our export (through the overlay) at registration.
        ours = tmp_path / "jobs" / job.id / "folder"
        theirs = mirror / job.folder
        assert (theirs / "sim-full.vmx").read_bytes() == (ours / "sim-full.vmx").read_bytes()
        assert (ours / "vmware.log").exists()
        assert inventory.vm("sim-full").runtime.powerState == "poweredOn"
        await job.migrate_now()
        summary = await job.wait()
    assert summary.state is State.COMPLETED, summary.errors
    after = inventory.snapshot()
    # The recovered VM runs on its destination; no NFS datastore is left on the host, and the
    # simulator's mirror of our export is gone with the datastore.
    assert after.host_datastores == before.host_datastores
    assert ("sim-full", "poweredOn", (LOCAL_DS,)) in after.vms
    assert not mirror.exists()


@pytest.mark.parametrize(
    "operation",
    [
        "vsphere.mount_nfs_datastore",
        "vsphere.register_vm",
        "vsphere.power_on",
    ],
)
async def test_rollback_after_each_vsphere_step_leaves_nothing(
    simulator: Simulator,
    vsphere: PyvmomiVSphereClient,
    inventory: Inventory,
    tmp_path: Path,
    operation: str,
) -> None:
    before = inventory.snapshot()
    faults = FaultPlan()
    faults.fail(operation, VSphereError("injected", operation=operation, fault="SystemError"))
    vm = f"sim-{operation.split('.')[1]}"
    async with LiveRecovery.from_settings(
        settings(tmp_path),
        vsphere=faulty(vsphere, faults, "vsphere"),
        catalog=catalog(vm),
        cache=MemoryBlockCache(),
    ) as lr:
        assert lr.assembly is not None
        serve_nfs_to_simulator(inventory, lr.assembly.server.port)
        job = await lr.start(spec(vm))
        with pytest.raises(VSphereError, match="injected"):
            await job.wait()
        assert not lr.backends.exporter.exports()
    assert job.state is State.FAILED and len(job.errors) == 1
    assert inventory.snapshot() == before
    assert not (simulator.nfs_root / datastore_name_for(HOST)).exists()


async def test_a_failed_relocate_keeps_the_vm_running_and_is_retried(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    """After power-on a failed storage vMotion never rolls back (issue 2/8): the VM keeps
    running from the backup and the retry brings it home."""
    faults = FaultPlan()
    op = "vsphere.relocate"
    faults.fail(op, VSphereError("injected", operation=op, fault="SystemError"))
    async with LiveRecovery.from_settings(
        settings(tmp_path),
        vsphere=faulty(vsphere, faults, "vsphere"),
        catalog=catalog("sim-retry"),
        cache=MemoryBlockCache(),
    ) as lr:
        assert lr.assembly is not None
        serve_nfs_to_simulator(inventory, lr.assembly.server.port)
        job = await lr.start(spec("sim-retry"))
        summary = await job.wait()
        assert not lr.backends.exporter.exports()
    assert summary.state is State.COMPLETED, summary.errors
    assert faults.count(op) == 2
    assert "vsphere.power_off" not in faults.calls
    assert State.ROLLING_BACK not in job.states_visited
    assert ("sim-retry", "poweredOn", (LOCAL_DS,)) in inventory.snapshot().vms
