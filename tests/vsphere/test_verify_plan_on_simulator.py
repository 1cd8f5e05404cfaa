"""A plan verification through pyvmomi against the govmomi simulator and our real NFS server:
a copy whose guest reports VMware Tools passes, one whose guest never does fails its heartbeat,
the ``stop`` group's failure leaves the last group not run, and nothing is left in the
inventory or on the simulator's NFS datastore."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import anyio
import pytest
from pyVmomi import vim

from liverecovery import LiveRecovery
from liverecovery.job.sharing import datastore_name_for
from liverecovery.plan.parse import parse_plan
from liverecovery.testing import MemoryBlockCache, MemoryCatalog
from liverecovery.testing.memory import MemoryDisk
from liverecovery.verify.checks import Check
from liverecovery.verify.run import VerifyOptions
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient
from tests.verify.helpers import BOOTABLE, DISK

from .conftest import HOST, LOCAL_DS, Inventory, Simulator
from .test_job_on_simulator import serve_nfs_to_simulator, settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

PLAN = f"""\
[plan]
name = "vp"
hosts = ["{HOST}"]

[defaults]
datastore = "{LOCAL_DS}"
esx_address = "127.0.0.1"
host = "{HOST}"

[[group]]
name = "first"

[[group]]
name = "second"
on_failure = "stop"

[[group]]
name = "third"

[[vm]]
name = "vp-a"
group = "first"

[[vm]]
name = "vp-b"
group = "second"

[[vm]]
name = "vp-c"
group = "third"
"""


def _play_guest(inventory: Inventory, prefix: str, deadline: float) -> None:
    """Make the guest of the copy named ``prefix...`` report Tools once it is powered on."""
    while time.monotonic() < deadline:
        names = [n for n in inventory.vm_names() if n.startswith(prefix)]
        vm = inventory.vm(names[0]) if names else None
        if vm is not None and str(vm.runtime.powerState) == "poweredOn":
            inventory.host().configManager.advancedOption.UpdateValues(
                [
                    vim.option.OptionValue(
                        key=f"vcsim.guest.VirtualMachine:{vm._moId}", value="192.0.2.40"
                    )
                ]
            )
            return
        time.sleep(0.05)


async def test_a_plan_verification_through_pyvmomi(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    before = inventory.snapshot()
    catalog = MemoryCatalog()
    for vm in ("vp-a", "vp-b", "vp-c"):
        backup = catalog.add_vm(vm, disk_sizes=(DISK,))
        backup.disks[f"{vm}_0.vmdk"] = MemoryDisk(DISK, BOOTABLE)
    plan = parse_plan(tomllib.loads(PLAN), source="vp.toml", text=PLAN)
    async with (
        LiveRecovery.from_settings(
            settings(tmp_path), vsphere=vsphere, catalog=catalog, cache=MemoryBlockCache()
        ) as lr,
        anyio.create_task_group() as tg,
    ):
        assert lr.assembly is not None
        serve_nfs_to_simulator(inventory, lr.assembly.server.port)
        tg.start_soon(
            anyio.to_thread.run_sync, _play_guest, inventory, "vp-a-verify-", time.monotonic() + 60
        )
        with anyio.fail_after(100):
            report = await lr.verify_plan(
                plan,
                [Check("partitions"), Check("heartbeat", timeout_s=3)],
                VerifyOptions(poll_s=0.2),
            )
    outcomes = {r.vm: r.outcome for r in report.vms}
    assert outcomes == {"vp-a": "passed", "vp-b": "failed", "vp-c": "not_run"}, report.to_markdown()
    b = next(r for r in report.vms if r.vm == "vp-b")
    assert b.report is not None and "heartbeat: timed_out" in "; ".join(b.report.failures)
    assert "group 'second' failed and its on_failure is stop" in report.stopped
    assert all(r.report is None or r.report.cleanup_clean for r in report.vms)
    assert inventory.snapshot() == before
    assert not (simulator.nfs_root / datastore_name_for(HOST)).exists()
