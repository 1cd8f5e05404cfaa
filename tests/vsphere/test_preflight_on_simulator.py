"""Preflight against the govmomi simulator through pyVmomi: ``describe`` reports the facts the
rules need, and each refusal vcsim can express stops the job before anything is exported,
mounted or registered, leaving the simulator's inventory as it was."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liverecovery import Backends, LiveRecovery, RecoverySpec, Settings, State
from liverecovery.backends import Target, TargetQuery
from liverecovery.errors import (
    DatastoreUnavailableError,
    HostUnavailableError,
    NetworkNotFoundError,
    PreflightError,
    VmNameTakenError,
)
from liverecovery.job.preflight import REQUIRED_PRIVILEGES, target_query
from liverecovery.testing import FaultPlan, MemoryBlockCache, MemoryCatalog, MemoryExporter, faulty
from liverecovery.vsphere.pyvmomi_client import DEFAULT_NFS_MAX_VOLUMES, PyvmomiVSphereClient

from .conftest import HOST, LOCAL_DS, Inventory, VmFiles

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


@pytest.fixture
def maintenance(inventory: Inventory) -> Iterator[Callable[[], None]]:
    """Puts the host in maintenance mode (vcsim's EnterMaintenanceMode); always exits it."""
    host = inventory.host()
    entered = []

    def wait_for(state: bool) -> None:
        deadline = time.monotonic() + 10
        while host.runtime.inMaintenanceMode != state:
            assert time.monotonic() < deadline, "the host did not change maintenance mode"
            time.sleep(0.01)

    def enter() -> None:
        host.EnterMaintenanceMode_Task(timeout=0)
        entered.append(True)
        wait_for(True)

    yield enter
    if entered:
        host.ExitMaintenanceMode_Task(timeout=0)
        wait_for(False)


async def test_describe_reports_the_host_its_datastores_and_networks(
    vsphere: PyvmomiVSphereClient, inventory: Inventory
) -> None:
    query = target_query(
        RecoverySpec(vm="fresh", esx_host=HOST, datastore=LOCAL_DS, redirect_writes_to="NODS"),
        {"ethernet0": "VM Network", "ethernet1": "Nope"},
    )
    facts = await vsphere.describe(query)
    assert facts.host.found and facts.host.connection_state == "connected"
    assert not facts.host.maintenance
    assert facts.host.nfs_max_volumes == DEFAULT_NFS_MAX_VOLUMES == 32
    assert "VM Network" in facts.host.networks and "Nope" not in facts.host.networks
    local = facts.datastores[LOCAL_DS]
    assert local.exists and local.mounted and local.accessible and local.writable
    expected = inventory.datastore(LOCAL_DS).summary
    assert (local.free_bytes, local.capacity_bytes) == (expected.freeSpace, expected.capacity)
    assert local.free_bytes > 0 and local.maintenance == "normal"
    missing = facts.datastores["NODS"]
    assert not missing.exists and not missing.mounted
    assert not facts.vm_name_taken
    assert facts.folder_found is None and facts.resource_pool_found is None
    # vcsim grants every privilege: each target found reports every privilege asked.
    assert facts.granted is not None
    assert facts.granted[Target("host", HOST)] == frozenset(REQUIRED_PRIVILEGES["host"])
    assert facts.granted[Target("folder", "")] == frozenset(REQUIRED_PRIVILEGES["folder"])
    assert Target("datastore", "NODS") not in facts.granted


async def test_describe_of_a_missing_host_folder_and_pool(vsphere: PyvmomiVSphereClient) -> None:
    facts = await vsphere.describe(TargetQuery(host="esx-nowhere"))
    assert not facts.host.found
    facts = await vsphere.describe(
        TargetQuery(host=HOST, folder="NoFolder", resource_pool="NoPool")
    )
    assert facts.folder_found is False and facts.resource_pool_found is False
    facts = await vsphere.describe(TargetQuery(host=HOST, folder="vm", resource_pool="Resources"))
    assert facts.folder_found is True and facts.resource_pool_found is True


async def test_describe_sees_maintenance_mode(
    vsphere: PyvmomiVSphereClient, maintenance: Callable[[], None]
) -> None:
    maintenance()
    facts = await vsphere.describe(TargetQuery(host=HOST))
    assert facts.host.maintenance


def _world(vsphere: PyvmomiVSphereClient, vm: str) -> tuple[Backends, FaultPlan]:
    faults = FaultPlan()
    catalog = MemoryCatalog()
    catalog.add_vm(vm, disk_sizes=(64 << 20,))
    client = faulty(vsphere, faults, "vsphere")
    backends = Backends(
        exporter=MemoryExporter(faults),
        catalog=catalog,
        cache=MemoryBlockCache(),
        vsphere=client,
        inventory=client,
    )
    return backends, faults


async def _refused(
    vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp: Path, spec: RecoverySpec
) -> PreflightError:
    before = inventory.snapshot()
    backends, faults = _world(vsphere, spec.vm)
    settings = Settings(
        job_results_dir=tmp, migration_trigger="delay", compensation_retry_delay_s=0
    )
    async with LiveRecovery(settings, backends) as lr:
        job = await lr.start(spec)
        with pytest.raises(PreflightError) as caught:
            await job.wait()
    assert job.state is State.FAILED
    assert "vsphere.describe" in faults.calls
    for call in ("exporter.export", "vsphere.mount_nfs_datastore", "vsphere.register_vm"):
        assert call not in faults.calls, call
    assert inventory.snapshot() == before
    return caught.value


async def test_a_missing_datastore_is_refused_before_export(
    vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    # The reported bug, through pyVmomi: `--datastore NODS`.
    err = await _refused(
        vsphere, inventory, tmp_path, RecoverySpec(vm="nods", esx_host=HOST, datastore="NODS")
    )
    assert isinstance(err, DatastoreUnavailableError)
    assert f"destination datastore 'NODS' does not exist (host '{HOST}'" in str(err)


async def test_a_host_in_maintenance_mode_is_refused(
    vsphere: PyvmomiVSphereClient,
    inventory: Inventory,
    tmp_path: Path,
    maintenance: Callable[[], None],
) -> None:
    maintenance()
    err = await _refused(
        vsphere, inventory, tmp_path, RecoverySpec(vm="maint", esx_host=HOST, datastore=LOCAL_DS)
    )
    assert isinstance(err, HostUnavailableError)
    assert f"host '{HOST}' is in maintenance mode" in str(err)


async def test_a_vm_name_already_registered_is_refused(
    vsphere: PyvmomiVSphereClient,
    inventory: Inventory,
    tmp_path: Path,
    make_vm_files: Callable[..., VmFiles],
    datastore_name: Callable[[], str],
) -> None:
    ds = datastore_name()
    await vsphere.mount_nfs_datastore(HOST, "192.0.2.10", "/export", ds)
    files = make_vm_files(ds, "taken")
    simulator_vm = await vsphere.register_vm(HOST, files.vmx_path, "taken")
    try:
        err = await _refused(
            vsphere,
            inventory,
            tmp_path,
            RecoverySpec(vm="taken", esx_host=HOST, datastore=LOCAL_DS),
        )
        assert isinstance(err, VmNameTakenError)
        assert "a VM named 'taken' is already registered" in str(err)
    finally:
        await vsphere.unregister_vm(simulator_vm)
        await vsphere.unmount_datastore(HOST, ds)


async def test_a_missing_port_group_is_refused(
    vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    spec = RecoverySpec(
        vm="nonet", esx_host=HOST, datastore=LOCAL_DS, network_map={"VM Network": "DR Net"}
    )
    err = await _refused(vsphere, inventory, tmp_path, spec)
    assert isinstance(err, NetworkNotFoundError)
    assert "ethernet0 connects to port group 'DR Net' (mapped from 'VM Network')" in str(err)
    assert "VM Network" in str(err)  # the host's networks are listed


def test_the_host_left_maintenance_mode(inventory: Inventory) -> None:
    assert not inventory.host().runtime.inMaintenanceMode
