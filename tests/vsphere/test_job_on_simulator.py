"""Whole jobs through ``LiveRecovery`` with the pyvmomi backend against the govmomi simulator.

The simulator keeps a NAS datastore's files in a local directory instead of mounting NFS, so
the exporter here materialises each published VM folder into that directory (as the NFS
mount would show it); everything vSphere does is the simulator's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from liverecovery import Backends, LiveRecovery, RecoverySpec, Settings, State
from liverecovery.errors import VSphereError
from liverecovery.job.sharing import datastore_name_for
from liverecovery.nfs.exports import ExportInfo
from liverecovery.nfs.filesystem import Filesystem, FileType
from liverecovery.testing import FaultPlan, MemoryBlockCache, MemoryCatalog, faulty
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

from .conftest import HOST, LOCAL_DS, Inventory, Simulator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


class DirectoryExporter:
    """Publishes VM folders as plain directories under the simulator's NAS datastore path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._exports: dict[str, ExportInfo] = {}

    async def export(self, path: str, clients: Sequence[str]) -> ExportInfo:
        self._exports[path] = ExportInfo(path, tuple(clients))
        return self._exports[path]

    async def unexport(self, path: str) -> None:
        del self._exports[path]

    async def publish(self, path: str, folder: str, filesystem: Filesystem) -> None:
        target = self.root / folder
        target.mkdir(parents=True)
        page = await filesystem.readdir(filesystem.root_id, 0, 1000)
        for entry in page.entries:
            if (await filesystem.getattr(entry.fileid)).type is FileType.REG:
                data, _ = await filesystem.read(entry.fileid, 0, 1 << 24)
                (target / entry.name).write_bytes(data)
        (target / "vmware.log").write_text("")  # ESXi creates it at registration

    async def unpublish(self, path: str, folder: str) -> None:
        for f in (self.root / folder).iterdir():
            f.unlink()
        (self.root / folder).rmdir()

    def exports(self) -> Mapping[str, ExportInfo]:
        return dict(self._exports)

    async def aclose(self) -> None:
        pass


@pytest.fixture
async def vsphere(simulator: Simulator) -> AsyncIterator[PyvmomiVSphereClient]:
    client = await PyvmomiVSphereClient.connect(
        simulator.url,
        simulator.user,
        simulator.password,
        ca_file=simulator.ca_file,
        poll_interval=0.01,
    )
    async with client:
        yield client


def world(simulator: Simulator, vsphere: PyvmomiVSphereClient, faults: FaultPlan, vm: str):  # type: ignore[no-untyped-def]
    root = simulator.nfs_root / datastore_name_for(HOST)
    root.mkdir(exist_ok=True)
    catalog = MemoryCatalog()
    catalog.add_vm(vm, disk_sizes=())
    exporter = DirectoryExporter(root)
    client = faulty(vsphere, faults, "vsphere")
    backends = Backends(
        exporter=exporter,
        catalog=catalog,
        cache=MemoryBlockCache(),
        vsphere=client,
        inventory=client,
    )
    return backends, exporter


def settings(tmp: Path) -> Settings:
    return Settings(
        job_results_dir=tmp,
        migration_trigger="delay",
        compensation_retry_delay_s=0,
        migration_backoff_s=0.1,
        nfs_address="127.0.0.1",
    )


async def test_full_job_against_the_simulator(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    before = inventory.snapshot()
    backends, exporter = world(simulator, vsphere, FaultPlan(), "sim-full")
    async with LiveRecovery(settings(tmp_path), backends) as lr:
        job = await lr.start(RecoverySpec(vm="sim-full", esx_host=HOST, datastore=LOCAL_DS))
        summary = await job.wait()
    assert summary.state is State.COMPLETED, summary.errors
    after = inventory.snapshot()
    # The recovered VM runs on its destination; no NFS datastore is left on the host.
    assert after.host_datastores == before.host_datastores
    assert ("sim-full", "poweredOn", (LOCAL_DS,)) in after.vms
    assert not exporter.exports() and not any(exporter.root.iterdir())


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
    backends, exporter = world(simulator, vsphere, faults, vm)
    async with LiveRecovery(settings(tmp_path), backends) as lr:
        job = await lr.start(RecoverySpec(vm=vm, esx_host=HOST, datastore=LOCAL_DS))
        with pytest.raises(VSphereError, match="injected"):
            await job.wait()
    assert job.state is State.FAILED and len(job.errors) == 1
    assert inventory.snapshot() == before
    assert not exporter.exports() and not any(exporter.root.iterdir())


async def test_a_failed_relocate_keeps_the_vm_running_and_is_retried(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    """After power-on a failed storage vMotion never rolls back (issue 2/8): the VM keeps
    running from the backup and the retry brings it home."""
    faults = FaultPlan()
    op = "vsphere.relocate"
    faults.fail(op, VSphereError("injected", operation=op, fault="SystemError"))
    backends, exporter = world(simulator, vsphere, faults, "sim-retry")
    async with LiveRecovery(settings(tmp_path), backends) as lr:
        job = await lr.start(RecoverySpec(vm="sim-retry", esx_host=HOST, datastore=LOCAL_DS))
        summary = await job.wait()
    assert summary.state is State.COMPLETED, summary.errors
    assert faults.count(op) == 2
    assert "vsphere.power_off" not in faults.calls
    assert State.ROLLING_BACK not in job.states_visited
    assert ("sim-retry", "poweredOn", (LOCAL_DS,)) in inventory.snapshot().vms
    assert not exporter.exports()
