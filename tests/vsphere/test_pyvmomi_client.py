"""PyvmomiVSphereClient against the govmomi simulator: the live-recovery call sequence, rollback
from each step's failure, the NFS.MaxVolumes preflight, fault translation and TLS verification.

After every step the simulator's inventory is read through a separate pyVmomi session.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from pyVmomi import vim

from liverecovery.backends import VmRef, VSphereClient
from liverecovery.errors import (
    BackendError,
    NfsVolumeLimitError,
    PreflightError,
    SettingsError,
    VSphereError,
)
from liverecovery.vsphere.pyvmomi_client import DEFAULT_NFS_MAX_VOLUMES, PyvmomiVSphereClient

from .conftest import HOST, LOCAL_DS, OTHER_LOCAL_DS, Inventory, Simulator, VmFiles

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

NFS_SERVER = "192.0.2.10"


async def test_implements_the_protocol(client: PyvmomiVSphereClient) -> None:
    assert isinstance(client, VSphereClient)


async def test_full_sequence_leaves_nothing_behind(
    client: PyvmomiVSphereClient,
    inventory: Inventory,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    baseline = inventory.snapshot()
    ds = datastore_name()
    files = make_vm_files(ds)

    with anyio.fail_after(30):
        mounted = await client.mount_nfs_datastore(HOST, NFS_SERVER, f"/export/{ds}", ds)
        assert mounted == ds
        nas = inventory.datastore(ds)
        assert nas.summary.type == "NFS"
        assert (nas.info.nas.remoteHost, nas.info.nas.remotePath) == (NFS_SERVER, f"/export/{ds}")
        assert [m.mountInfo.accessMode for m in nas.host] == ["readWrite"]
        assert inventory.snapshot().host_datastores == baseline.host_datastores | {(HOST, ds)}

        assert await client.find_vm(files.vmx_path) is None
        vm = await client.register_vm(HOST, files.vmx_path, files.name)
        assert (vm.name, vm.vmx_path) == (files.name, files.vmx_path)
        assert await client.find_vm(files.vmx_path) == vm
        registered = inventory.vm(files.name)
        assert registered._moId == vm.moref
        assert registered.runtime.host.name == HOST
        assert [d.name for d in registered.datastore] == [ds]
        assert registered.runtime.powerState == "poweredOff"

        await client.power_on(vm)
        assert inventory.vm(files.name).runtime.powerState == "poweredOn"
        assert await client.power_state(vm) == "poweredOn"

        seen: list[tuple[int, int]] = []
        moved = await client.relocate(vm, LOCAL_DS, progress=lambda d, t: seen.append((d, t)))
        assert moved.moref == vm.moref
        assert seen and seen[-1] == (100, 100)
        assert [d.name for d in inventory.vm(files.name).datastore] == [LOCAL_DS]
        assert inventory.vm(files.name).runtime.powerState == "poweredOn"

        await client.power_off(moved)
        assert inventory.vm(files.name).runtime.powerState == "poweredOff"

        await client.unregister_vm(moved)
        assert files.name not in inventory.vm_names()
        assert await client.find_vm(moved.vmx_path) is None

        await client.unmount_datastore(HOST, ds)
    assert inventory.snapshot() == baseline


async def test_job_success_path_unmounts_under_the_running_migrated_vm(
    client: PyvmomiVSphereClient,
    inventory: Inventory,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    """A completed job: the VM keeps running on its destination while the NFS datastore goes."""
    baseline = inventory.snapshot()
    ds = datastore_name()
    files = make_vm_files(ds)
    with anyio.fail_after(30):
        await client.mount_nfs_datastore(HOST, NFS_SERVER, f"/export/{ds}", ds)
        vm = await client.register_vm(HOST, files.vmx_path, files.name)
        await client.power_on(vm)
        moved = await client.relocate(vm, LOCAL_DS)
        await client.unmount_datastore(HOST, ds)

        after = inventory.snapshot()
        assert (HOST, ds) not in after.host_datastores
        assert after.host_datastores == baseline.host_datastores
        assert after.vms == baseline.vms | {(files.name, "poweredOn", (LOCAL_DS,))}

        await client.power_off(moved)
        await client.unregister_vm(moved)
    assert inventory.snapshot() == baseline


# -- rollback ------------------------------------------------------------------------------------


class Steps:
    """The job's vSphere steps with their compensations; each step can be made to fail for real."""

    def __init__(
        self,
        client: PyvmomiVSphereClient,
        inventory: Inventory,
        ds: str,
        files: VmFiles,
        simulator: Simulator,
    ) -> None:
        self.client = client
        self.inventory = inventory
        self.ds = ds
        self.files = files
        self.simulator = simulator
        self.vm: VmRef | None = None
        self.undo: list[Callable[[], Awaitable[None]]] = []

    async def mount(self, fail: bool) -> None:
        if fail:  # the NAS directory is missing: the host cannot mount the export
            shutil.rmtree(self.simulator.nfs_root / self.ds)
        await self.client.mount_nfs_datastore(HOST, NFS_SERVER, "/export", self.ds)
        self.undo.append(lambda: self.client.unmount_datastore(HOST, self.ds))

    async def register(self, fail: bool) -> None:
        if fail:  # the .nvram the host needs beside the .vmx is gone
            folder = self.simulator.nfs_root / self.ds / self.files.folder
            (folder / f"{self.files.name}.nvram").unlink()
        vm = self.vm = await self.client.register_vm(HOST, self.files.vmx_path, self.files.name)
        self.undo.append(lambda: self.client.unregister_vm(vm))

    async def power_on(self, fail: bool) -> None:
        assert self.vm is not None
        if fail:
            self.disable("PowerOnVM_Task")
        vm = self.vm
        await self.client.power_on(vm)
        self.undo.append(lambda: self.client.power_off(vm))

    async def relocate(self, fail: bool) -> None:
        assert self.vm is not None
        if fail:
            self.disable("RelocateVM_Task")
        await self.client.relocate(self.vm, LOCAL_DS)

    def disable(self, method: str) -> None:
        """Make vSphere refuse ``method`` on the VM (MethodDisabled), via the simulator's hook."""
        assert self.vm is not None
        disable_methods(self.inventory, f"VirtualMachine:{self.vm.moref}", method)

    async def rollback(self) -> None:
        for undo in reversed(self.undo):
            await undo()


def disable_methods(inventory: Inventory, moref: str, methods: str) -> None:
    """tests/vcsim's hook: the host option ``vcsim.disableMethods.<moref>`` disables methods."""
    options = inventory.host().configManager.advancedOption
    options.UpdateValues(
        [vim.option.OptionValue(key=f"vcsim.disableMethods.{moref}", value=methods)]
    )


STEPS = ("mount", "register", "power_on", "relocate")
OPERATIONS = {
    "mount": ("vsphere.mount_nfs_datastore", "NotFound"),
    "register": ("vsphere.register_vm", "NotFound"),
    "power_on": ("vsphere.power_on", "MethodDisabled"),
    "relocate": ("vsphere.relocate", "MethodDisabled"),
}


@pytest.mark.parametrize("failing", STEPS)
async def test_rollback_after_each_step_failure_leaves_nothing(
    failing: str,
    client: PyvmomiVSphereClient,
    inventory: Inventory,
    simulator: Simulator,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    baseline = inventory.snapshot()
    ds = datastore_name()
    steps = Steps(client, inventory, ds, make_vm_files(ds), simulator)
    with anyio.fail_after(30):
        with pytest.raises(VSphereError) as caught:
            for name in STEPS:
                await getattr(steps, name)(fail=name == failing)
                assert inventory.snapshot() != baseline
        assert (caught.value.operation, caught.value.fault) == OPERATIONS[failing]
        assert len(steps.undo) == STEPS.index(failing)
        await steps.rollback()
    assert inventory.snapshot() == baseline


# -- NFS.MaxVolumes ------------------------------------------------------------------------------


async def test_nfs_max_volumes_missing_option_means_esxi_default(
    client: PyvmomiVSphereClient, inventory: Inventory, datastore_name: Callable[[], str]
) -> None:
    baseline = inventory.snapshot()
    mounted, limit = await client.nfs_volumes(HOST)
    assert (mounted, limit) == (0, DEFAULT_NFS_MAX_VOLUMES)
    names = [datastore_name() for _ in range(DEFAULT_NFS_MAX_VOLUMES + 1)]
    try:
        with anyio.fail_after(30):
            for name in names[:-1]:
                await client.mount_nfs_datastore(HOST, NFS_SERVER, f"/export/{name}", name)
            with pytest.raises(NfsVolumeLimitError) as caught:
                await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export/last", names[-1])
    finally:
        for name in names[:-1]:
            if (HOST, name) in inventory.snapshot().host_datastores:
                await client.unmount_datastore(HOST, name)
    error = caught.value
    assert isinstance(error, PreflightError)
    limit = DEFAULT_NFS_MAX_VOLUMES
    assert (error.host, error.mounted, error.limit) == (HOST, limit, limit)
    assert f"NFS.MaxVolumes is {limit}" in str(error) and names[-1] in str(error)
    assert inventory.snapshot() == baseline


async def test_nfs_max_volumes_option_is_respected(
    client: PyvmomiVSphereClient, inventory: Inventory, datastore_name: Callable[[], str]
) -> None:
    with anyio.fail_after(30):
        baseline = inventory.snapshot()
        options = inventory.host().configManager.advancedOption
        options.UpdateValues([vim.option.OptionValue(key="NFS.MaxVolumes", value=1)])
        first, second = datastore_name(), datastore_name()
        try:
            assert await client.nfs_volumes(HOST) == (0, 1)
            await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export/a", first)
            with pytest.raises(NfsVolumeLimitError, match=r"already mounts 1 NFS datastores.*is 1"):
                await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export/b", second)
            assert (HOST, second) not in inventory.snapshot().host_datastores
            await client.unmount_datastore(HOST, first)
        finally:
            options.UpdateValues([vim.option.OptionValue(key="NFS.MaxVolumes", value=8)])
        assert inventory.snapshot() == baseline


# -- faults --------------------------------------------------------------------------------------


async def test_power_on_twice_is_invalid_power_state(
    client: PyvmomiVSphereClient,
    inventory: Inventory,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    with anyio.fail_after(30):
        baseline = inventory.snapshot()
        ds = datastore_name()
        files = make_vm_files(ds)
        await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export", ds)
        vm = await client.register_vm(HOST, files.vmx_path, files.name)
        await client.power_on(vm)
        with pytest.raises(VSphereError) as caught:
            await client.power_on(vm)
        error = caught.value
        assert (error.fault, error.operation) == ("InvalidPowerState", "vsphere.power_on")
        assert "existingState=poweredOn" in str(error)

        with pytest.raises(VSphereError) as in_use:
            await client.unmount_datastore(HOST, ds)
        assert in_use.value.fault == "ResourceInUse"
        with pytest.raises(VSphereError) as powered_on:
            await client.unregister_vm(vm)
        assert powered_on.value.fault == "InvalidPowerState"

        await client.power_off(vm)
        await client.unregister_vm(vm)
        with pytest.raises(VSphereError) as gone:
            await client.power_on(vm)
        assert gone.value.fault == "ManagedObjectNotFound"
        await client.unmount_datastore(HOST, ds)
        with pytest.raises(VSphereError) as not_mounted:
            await client.unmount_datastore(HOST, ds)
        assert not_mounted.value.fault == "NotFound"
        assert inventory.snapshot() == baseline


async def test_register_missing_vmx_is_a_fault_and_leaves_no_vm(
    client: PyvmomiVSphereClient,
    inventory: Inventory,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    with anyio.fail_after(30):
        baseline = inventory.snapshot()
        ds = datastore_name()
        files = make_vm_files(ds, vmx=False)
        await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export", ds)
        try:
            with pytest.raises(VSphereError) as caught:
                await client.register_vm(HOST, files.vmx_path, files.name)
            assert (caught.value.fault, caught.value.operation) == (
                "NotFound",
                "vsphere.register_vm",
            )
            assert files.name not in inventory.vm_names()
        finally:
            await client.unmount_datastore(HOST, ds)
        assert inventory.snapshot() == baseline


@pytest.mark.parametrize(
    ("path", "fault"),
    [
        ("vm/vm.vmx", "InvalidDatastorePath"),
        ("[LocalDS_0] vm/vm.txt", "InvalidDatastorePath"),
        ("[nowhere] vm/vm.vmx", "NotFound"),
    ],
)
async def test_register_rejects_bad_paths(
    client: PyvmomiVSphereClient, inventory: Inventory, path: str, fault: str
) -> None:
    with anyio.fail_after(30):
        baseline = inventory.snapshot()
        with pytest.raises(VSphereError) as caught:
            await client.register_vm(HOST, path, "bad")
        assert caught.value.fault == fault
        assert inventory.snapshot() == baseline


async def test_mount_duplicate_name_is_a_fault(
    client: PyvmomiVSphereClient, inventory: Inventory, datastore_name: Callable[[], str]
) -> None:
    with anyio.fail_after(30):
        baseline = inventory.snapshot()
        ds = datastore_name()
        await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export/one", ds)
        try:
            with pytest.raises(VSphereError) as caught:
                await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export/two", ds)
            assert caught.value.fault == "DuplicateName"
            assert ds in str(caught.value)
        finally:
            await client.unmount_datastore(HOST, ds)
        assert inventory.snapshot() == baseline


async def test_unknown_host_is_not_found(client: PyvmomiVSphereClient) -> None:
    with anyio.fail_after(30):
        with pytest.raises(VSphereError) as caught:
            await client.mount_nfs_datastore("esx-nowhere", NFS_SERVER, "/export", "x")
        assert caught.value.fault == "NotFound"
        assert "esx-nowhere" in str(caught.value)


async def test_lookups_by_name(client: PyvmomiVSphereClient) -> None:
    with anyio.fail_after(30):
        host = await client.find_host(HOST)
        assert host.name == HOST
        assert (await client.find_datastore(HOST, LOCAL_DS)).name == LOCAL_DS
        pool = await client.find_resource_pool(HOST)
        assert pool == host.parent.resourcePool
        folder = await client.find_folder(HOST)
        assert folder.name == "vm"


async def test_named_resource_pool_and_folder(
    simulator: Simulator,
    inventory: Inventory,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    with anyio.fail_after(30):
        baseline = inventory.snapshot()
        root_pool = inventory.host().parent.resourcePool
        datacenter = inventory.host().parent.parent.parent
        pool = root_pool.CreateResourcePool(
            "lr-pool",
            vim.ResourceConfigSpec(
                cpuAllocation=vim.ResourceAllocationInfo(
                    limit=-1,
                    reservation=0,
                    expandableReservation=True,
                    shares=vim.SharesInfo(level="normal"),
                ),
                memoryAllocation=vim.ResourceAllocationInfo(
                    limit=-1,
                    reservation=0,
                    expandableReservation=True,
                    shares=vim.SharesInfo(level="normal"),
                ),
            ),
        )
        folder = datacenter.vmFolder.CreateFolder("lr-folder")
        try:
            async with await PyvmomiVSphereClient.connect(
                simulator.server,
                simulator.user,
                simulator.password,
                ca_file=simulator.ca_file,
                resource_pool="lr-pool",
                vm_folder="lr-folder",
                poll_interval=0.01,
            ) as client:
                ds = datastore_name()
                files = make_vm_files(ds)
                await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export", ds)
                vm = await client.register_vm(HOST, files.vmx_path, files.name)
                registered = inventory.vm(files.name)
                assert registered.resourcePool == pool
                assert registered.parent == folder
                await client.unregister_vm(vm)
                await client.unmount_datastore(HOST, ds)
        finally:
            folder.Destroy()
            pool.Destroy()
        assert inventory.snapshot() == baseline


async def test_relocate_with_per_disk_datastores(
    client: PyvmomiVSphereClient,
    inventory: Inventory,
    simulator: Simulator,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    with anyio.fail_after(30):
        baseline = inventory.snapshot()
        ds = datastore_name()
        files = make_vm_files(ds)
        await client.mount_nfs_datastore(HOST, NFS_SERVER, "/export", ds)
        vm = await client.register_vm(HOST, files.vmx_path, files.name)
        changes = []
        for bus, controller_key in ((0, 200), (1, 201)):
            disk_file = f"{files.name}_{bus}.vmdk"
            folder = simulator.nfs_root / ds / files.folder
            (folder / disk_file).write_bytes(b"")
            (folder / disk_file.replace(".vmdk", "-flat.vmdk")).write_bytes(b"")
            backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{ds}] {files.folder}/{disk_file}", diskMode="persistent"
            )
            disk = vim.vm.device.VirtualDisk(
                key=-(bus + 1),
                controllerKey=controller_key,
                unitNumber=0,
                capacityInKB=1024,
                backing=backing,
            )
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=disk))
        await client.reconfigure(vm, vim.vm.ConfigSpec(deviceChange=changes))
        await client.power_on(vm)

        with pytest.raises(VSphereError) as caught:
            await client.relocate(vm, LOCAL_DS, disk_datastores={"scsi0:0": OTHER_LOCAL_DS})
        assert caught.value.fault == "InvalidArgument"
        assert "ide0:0, ide1:0" in str(caught.value)

        moved = await client.relocate(
            vm, LOCAL_DS, disk_datastores={"ide0:0": LOCAL_DS, "ide1:0": OTHER_LOCAL_DS}
        )
        assert [d.name for d in inventory.vm(files.name).datastore] == [LOCAL_DS]
        await client.power_off(moved)
        await client.unregister_vm(moved)
        await client.unmount_datastore(HOST, ds)
        assert inventory.snapshot() == baseline


# -- task polling --------------------------------------------------------------------------------


class _StuckTask:
    """A task that never finishes: what a hung vCenter task looks like to the poller."""

    def __init__(self) -> None:
        self.cancelled = False
        self._moId = "task-stuck"

    @property
    def info(self) -> Any:
        return vim.TaskInfo(state="running", progress=42, cancelable=True)

    def Cancel(self) -> None:
        self.cancelled = True


async def test_task_timeout_cancels_the_task_and_reports_progress(
    client: PyvmomiVSphereClient,
) -> None:
    with anyio.fail_after(30):
        task = _StuckTask()
        seen: list[tuple[int, int]] = []
        with pytest.raises(BackendError) as caught:
            await client._wait_task(
                "vsphere.relocate", task, time_limit=0.2, progress=lambda d, t: seen.append((d, t))
            )
        assert caught.value.operation == "vsphere.relocate"
        assert isinstance(caught.value, TimeoutError)
        assert task.cancelled
        assert seen == [(42, 100)]


async def test_cancelling_the_caller_cancels_the_task(client: PyvmomiVSphereClient) -> None:
    task = _StuckTask()
    with anyio.move_on_after(0.2) as scope:
        await client._wait_task("vsphere.power_on", task, time_limit=30)
    assert scope.cancelled_caught
    assert task.cancelled


# -- connection and TLS --------------------------------------------------------------------------


async def test_certificate_verification_is_on_by_default(simulator: Simulator) -> None:
    with anyio.fail_after(20), pytest.raises(BackendError) as caught:
        await PyvmomiVSphereClient.connect(simulator.url, simulator.user, simulator.password)
    error = caught.value
    assert not isinstance(error, VSphereError)
    assert error.operation == "vsphere.connect"
    assert "not trusted" in str(error) and "insecure=True" in str(error)


async def test_insecure_opt_out_connects(simulator: Simulator) -> None:
    with anyio.fail_after(20):
        async with await PyvmomiVSphereClient.connect(
            simulator.server, simulator.user, simulator.password, insecure=True
        ) as client:
            assert (await client.find_host(HOST)).name == HOST


async def test_ca_file_and_insecure_exclude_each_other(simulator: Simulator) -> None:
    with pytest.raises(SettingsError):
        await PyvmomiVSphereClient.connect(
            simulator.server, "u", "p", insecure=True, ca_file=simulator.ca_file
        )


async def test_wrong_password_is_invalid_login(simulator: Simulator) -> None:
    with anyio.fail_after(20), pytest.raises(VSphereError) as caught:
        await PyvmomiVSphereClient.connect(
            simulator.server, simulator.user, "wrong", ca_file=simulator.ca_file
        )
    assert (caught.value.fault, caught.value.operation) == ("InvalidLogin", "vsphere.connect")


async def test_unreachable_server_is_backend_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with anyio.fail_after(20), pytest.raises(BackendError) as caught:
        await PyvmomiVSphereClient.connect(f"127.0.0.1:{port}", "u", "p", http_timeout=5)
    assert not isinstance(caught.value, VSphereError)
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_closed_client_refuses_calls(simulator: Simulator) -> None:
    with anyio.fail_after(30):
        client = await PyvmomiVSphereClient.connect(
            simulator.server, simulator.user, simulator.password, ca_file=simulator.ca_file
        )
        await client.aclose()
        await client.aclose()
        with pytest.raises(BackendError, match="closed"):
            await client.find_host(HOST)


# -- concurrency ---------------------------------------------------------------------------------


async def test_concurrent_mounts_respect_nfs_max_volumes(
    client: PyvmomiVSphereClient, inventory: Inventory, datastore_name: Callable[[], str]
) -> None:
    baseline = inventory.snapshot()
    options = inventory.host().configManager.advancedOption
    options.UpdateValues([vim.option.OptionValue(key="NFS.MaxVolumes", value=2)])
    names = [datastore_name() for _ in range(5)]
    mounted: list[str] = []
    refused: list[NfsVolumeLimitError] = []

    async def mount(name: str) -> None:
        try:
            mounted.append(await client.mount_nfs_datastore(HOST, NFS_SERVER, f"/e/{name}", name))
        except NfsVolumeLimitError as exc:
            refused.append(exc)

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for name in names:
                    tg.start_soon(mount, name)
        assert len(mounted) == 2 and len(refused) == 3
        assert all(e.mounted == 2 and e.limit == 2 for e in refused)
        host_ds = {ds for host, ds in inventory.snapshot().host_datastores if host == HOST}
        assert host_ds & set(names) == set(mounted)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for name in mounted:
                    tg.start_soon(client.unmount_datastore, HOST, name)
    finally:
        options.UpdateValues([vim.option.OptionValue(key="NFS.MaxVolumes", value=8)])
    assert inventory.snapshot() == baseline


async def test_concurrent_jobs_share_one_client(
    client: PyvmomiVSphereClient,
    inventory: Inventory,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    baseline = inventory.snapshot()

    async def job() -> None:
        ds = datastore_name()
        files = make_vm_files(ds)
        await client.mount_nfs_datastore(HOST, NFS_SERVER, f"/export/{ds}", ds)
        vm = await client.register_vm(HOST, files.vmx_path, files.name)
        await client.power_on(vm)
        moved = await client.relocate(vm, LOCAL_DS)
        await client.power_off(moved)
        await client.unregister_vm(moved)
        await client.unmount_datastore(HOST, ds)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(job)
    assert inventory.snapshot() == baseline


# -- VM questions during power-on ----------------------------------------------------------------


class _QuestionVm:
    """A VM whose power-on waits on a question, as ESXi does for a VM whose files moved."""

    def __init__(self, question: Any) -> None:
        self._moId = "vm-question"
        self.runtime = vim.vm.RuntimeInfo(question=question)
        self.answers: list[tuple[str, str]] = []

    def Answer(self, question_id: str, choice: str) -> None:
        self.answers.append((question_id, choice))
        self.runtime = vim.vm.RuntimeInfo(question=None)


class _PowerOnTask:
    """Runs until the VM's question is answered."""

    def __init__(self, vm: _QuestionVm) -> None:
        self._moId = "task-power-on"
        self.vm = vm

    @property
    def info(self) -> Any:
        state = "success" if self.vm.answers else "running"
        return vim.TaskInfo(state=state, progress=None, cancelable=False)


async def test_power_on_answers_the_moved_or_copied_question(
    client: PyvmomiVSphereClient,
) -> None:
    question = vim.vm.QuestionInfo(
        id="q-7",
        text="This virtual machine might have been moved or copied.",
        choice=vim.option.ChoiceOption(
            choiceInfo=[
                vim.ElementDescription(key="0", label="button.uuid.cancel", summary="Cancel"),
                vim.ElementDescription(key="1", label="button.uuid.moveTheVM", summary="Moved"),
                vim.ElementDescription(key="2", label="button.uuid.copyTheVM", summary="Copied"),
            ]
        ),
        message=[vim.vm.Message(id="msg.uuid.altered", text="")],
    )
    vm = _QuestionVm(question)
    with anyio.fail_after(10):
        await client._wait_task("vsphere.power_on", _PowerOnTask(vm), time_limit=10, vm=vm)
    assert vm.answers == [("q-7", "1")]


async def test_power_on_reports_a_question_it_cannot_answer(
    client: PyvmomiVSphereClient,
) -> None:
    question = vim.vm.QuestionInfo(
        id="q-8",
        text="Insufficient disk space on datastore 'lr-1'.",
        choice=vim.option.ChoiceOption(
            choiceInfo=[vim.ElementDescription(key="0", label="Retry", summary="Retry")]
        ),
        message=[vim.vm.Message(id="msg.hbacommon.outofspace", text="")],
    )
    vm = _QuestionVm(question)
    with anyio.fail_after(10), pytest.raises(VSphereError) as caught:
        await client._wait_task(
            "vsphere.power_on", _PowerOnTask(vm), time_limit=10, vm=vm, subject="VM web"
        )
    assert caught.value.fault == "VirtualMachineQuestion"
    assert "Insufficient disk space" in str(caught.value)
    assert vm.answers == []
