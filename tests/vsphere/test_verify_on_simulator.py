"""A backup verification through pyVmomi against the govmomi simulator and our NFS server.

What the simulator (Debian's govmomi 0.24.2) offers a verification: VMs it registers report no
VMware Tools (heartbeat gray, no IP address) unless tests/vcsim's guest hook plays a booted
guest, and it implements neither ``CreateScreenshot_Task`` nor the guest process manager
(StartProgramInGuest). So the verification powers the copy on and either finds no heartbeat
(timed out, with vSphere's answer as the reason) or, with the hook, a green heartbeat and an IP
address; the screenshot is reported as not offered; and everything is undone: the inventory is
as before, with no VM and no NFS datastore left.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from pyVmomi import vim

from liverecovery import LiveRecovery, RecoverySpec
from liverecovery.config import MiB
from liverecovery.job.sharing import datastore_name_for
from liverecovery.testing import MemoryBlockCache, MemoryCatalog
from liverecovery.testing.disk_images import gpt_disk
from liverecovery.testing.memory import MemoryDisk
from liverecovery.verify.checks import Check, Outcome
from liverecovery.verify.run import VerifyOptions
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

from .conftest import HOST, LOCAL_DS, Inventory, Simulator
from .test_job_on_simulator import serve_nfs_to_simulator, settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


async def test_verify_powers_on_checks_and_leaves_nothing_on_the_simulator(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    before = inventory.snapshot()
    catalog = MemoryCatalog()
    backup = catalog.add_vm("sim-verify", disk_sizes=(16 * MiB,))
    backup.disks["sim-verify_0.vmdk"] = MemoryDisk(
        16 * MiB, gpt_disk(16 * MiB, [(2048, 8191, "vfat"), (8192, 30000, "ext4")])
    )
    spec = RecoverySpec(
        vm="sim-verify", esx_host=HOST, datastore=LOCAL_DS, esx_address="127.0.0.1", job_id="v1"
    )
    powered: list[str] = []
    async with LiveRecovery.from_settings(
        settings(tmp_path), vsphere=vsphere, catalog=catalog, cache=MemoryBlockCache()
    ) as lr:
        assert lr.assembly is not None
        serve_nfs_to_simulator(inventory, lr.assembly.server.port)
        original = vsphere.power_on

        async def watch_power_on(vm: object) -> None:
            await original(vm)  # type: ignore[arg-type]
            powered.append(str(inventory.vm("sim-verify-verify-v1").runtime.powerState))

        vsphere.power_on = watch_power_on  # type: ignore[method-assign]
        try:
            report = await lr.verify(
                spec,
                [
                    Check("partitions"),
                    Check("heartbeat", timeout_s=1.5),
                    Check("screenshot", required=False),
                ],
                VerifyOptions(poll_s=0.2),
            )
        finally:
            del vsphere.power_on
    assert powered == ["poweredOn"], report  # the isolated copy really ran on the simulator
    outcomes = {c.name: c for c in report.checks}
    assert outcomes["partitions"].outcome is Outcome.PASSED
    assert "GPT: 1=vfat, 2=ext4" in outcomes["partitions"].detail
    assert outcomes["heartbeat"].outcome is Outcome.TIMED_OUT
    assert "heartbeat gray" in outcomes["heartbeat"].detail
    assert outcomes["screenshot"].outcome is Outcome.SKIPPED
    assert not report.passed and report.cleanup_clean
    after = inventory.snapshot()
    assert after == before
    assert not (simulator.nfs_root / datastore_name_for(HOST)).exists()
    data = json.loads((tmp_path / "verify" / "v1" / "report.json").read_text())
    assert data["verification_vm"] == "sim-verify-verify-v1"
    assert data["cleanup"] == {"clean": True, "errors": []}


async def test_verify_passes_once_the_guest_reports_tools_and_an_ip(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    """tests/vcsim's guest hook plays VMware Tools: once the copy runs, the test makes its guest
    report a green heartbeat and an IP address, as a booted guest would."""
    before = inventory.snapshot()
    catalog = MemoryCatalog()
    backup = catalog.add_vm("sim-pass", disk_sizes=(16 * MiB,))
    backup.disks["sim-pass_0.vmdk"] = MemoryDisk(
        16 * MiB, gpt_disk(16 * MiB, [(2048, 30000, "ext4")])
    )
    spec = RecoverySpec(
        vm="sim-pass", esx_host=HOST, datastore=LOCAL_DS, esx_address="127.0.0.1", job_id="v2"
    )

    def boot_guest() -> bool:
        try:
            vm = inventory.vm("sim-pass-verify-v2")
        except Exception:
            return False
        if str(vm.runtime.powerState) != "poweredOn":
            return False
        options = inventory.host().configManager.advancedOption
        key = f"vcsim.guest.VirtualMachine:{vm._moId}"
        options.UpdateValues([vim.option.OptionValue(key=key, value="192.0.2.20")])
        return True

    async def guest() -> None:
        while not await anyio.to_thread.run_sync(boot_guest):
            await anyio.sleep(0.05)

    async with (
        LiveRecovery.from_settings(
            settings(tmp_path), vsphere=vsphere, catalog=catalog, cache=MemoryBlockCache()
        ) as lr,
        anyio.create_task_group() as tg,
    ):
        assert lr.assembly is not None
        serve_nfs_to_simulator(inventory, lr.assembly.server.port)
        tg.start_soon(guest)
        report = await lr.verify(
            spec,
            [Check("heartbeat", timeout_s=20), Check("ip", timeout_s=20)],
            VerifyOptions(poll_s=0.1, isolated_network="VM Network"),
        )
    assert report.passed, report.failures
    assert report.time_to_heartbeat_s is not None
    assert "192.0.2.20" in report.checks[1].detail
    assert report.isolation == "NICs on isolated port group 'VM Network'"
    assert inventory.snapshot() == before
