"""A recovery plan through pyvmomi against the govmomi simulator and our real NFS server."""

from __future__ import annotations

import tomllib
from pathlib import Path

import anyio
import pytest

from liverecovery import LiveRecovery
from liverecovery.backends import TargetQuery
from liverecovery.errors import PlanError
from liverecovery.plan.parse import parse_plan
from liverecovery.testing import MemoryBlockCache, MemoryCatalog
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

from .conftest import HOST, LOCAL_DS, Inventory, Simulator
from .test_job_on_simulator import serve_nfs_to_simulator, settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

PLAN = f"""\
[plan]
name = "vcsim"
hosts = ["{HOST}"]
placement = "least-loaded"

[defaults]
datastore = "{LOCAL_DS}"
esx_address = "127.0.0.1"

[[group]]
name = "first"

[[group]]
name = "second"

[[vm]]
name = "plan-a"
group = "first"

[[vm]]
name = "plan-b"
group = "second"

[[vm]]
name = "plan-c"
group = "second"
"""


async def test_a_plan_of_three_vms_through_pyvmomi(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    facts = (await vsphere.describe(TargetQuery(host=HOST))).host
    assert facts.memory_free_bytes is not None and facts.memory_free_bytes > 0
    assert facts.cpu_free_mhz is not None
    assert facts.max_conn_per_ip == 128  # the simulator has no SunRPC.* options: ESXi's limit
    catalog = MemoryCatalog()
    for vm in ("plan-a", "plan-b", "plan-c"):
        catalog.add_vm(vm, disk_sizes=(16 << 20,), data_per_disk=1 << 20)
    plan = parse_plan(tomllib.loads(PLAN), source="vcsim.toml", text=PLAN)
    async with LiveRecovery.from_settings(
        settings(tmp_path), vsphere=vsphere, catalog=catalog, cache=MemoryBlockCache()
    ) as lr:
        assert lr.assembly is not None
        serve_nfs_to_simulator(inventory, lr.assembly.server.port)
        run = await lr.run_plan(plan)
        with anyio.fail_after(90):
            summary = await run.wait()
    assert summary["state"] == "completed", summary
    rows = {r["vm"]: r for r in summary["vms"]}
    assert rows["plan-a"]["power_on_s"] <= min(
        rows["plan-b"]["power_on_s"], rows["plan-c"]["power_on_s"]
    )
    after = inventory.snapshot()
    for vm in ("plan-a", "plan-b", "plan-c"):
        assert (vm, "poweredOn", (LOCAL_DS,)) in after.vms


async def test_an_unknown_host_is_refused_by_vsphere_before_anything_starts(
    simulator: Simulator, vsphere: PyvmomiVSphereClient, inventory: Inventory, tmp_path: Path
) -> None:
    text = PLAN.replace(f'hosts = ["{HOST}"]', f'hosts = ["{HOST}", "no-such-host"]')
    plan = parse_plan(tomllib.loads(text), source="vcsim.toml", text=text)
    catalog = MemoryCatalog()
    catalog.add_vm("plan-a", disk_sizes=(16 << 20,))
    before = inventory.snapshot()
    async with LiveRecovery.from_settings(
        settings(tmp_path), vsphere=vsphere, catalog=catalog, cache=MemoryBlockCache()
    ) as lr:
        with pytest.raises(PlanError) as info:
            await lr.run_plan(plan)
        assert lr.jobs() == []
    assert "vcsim.toml:3: host 'no-such-host' is not in the vSphere inventory" in str(info.value)
    assert "vm 'plan-b' is not in the backup catalog" in str(info.value)
    assert inventory.snapshot() == before
