"""A plan against several simulated ESX hosts over our real NFS server, end to end."""

from __future__ import annotations

import tomllib
from pathlib import Path

import anyio
import pytest

from liverecovery import LiveRecovery, Settings
from liverecovery.config import MiB
from liverecovery.plan.parse import parse_plan
from liverecovery.sim.embedded import verify_disk
from liverecovery.sim.hosts import embedded_hosts
from liverecovery.testing import MemoryCatalog

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

PLAN = """\
[plan]
name = "emb"
hosts = ["esx-a", "esx-b"]
placement = "least-loaded"

[defaults]
datastore = "datastore1"
esx_address = "127.0.0.1"

[[group]]
name = "db"
wait = "heartbeat"

[[group]]
name = "app"

[[vm]]
name = "db1"
group = "db"
host = "esx-a"

[[vm]]
name = "app1"
group = "app"

[[vm]]
name = "app2"
group = "app"
"""


async def test_a_plan_on_two_simulated_hosts(tmp_path: Path) -> None:
    catalog = MemoryCatalog()
    for vm in ("db1", "app1", "app2"):
        catalog.add_vm(vm, disk_sizes=(32 * MiB,), data_per_disk=2 * MiB)
    settings = Settings(
        job_results_dir=tmp_path / "results",
        migration_trigger="delay",
        serve_before_migrate_s=0.2,
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        compensation_retry_delay_s=0,
    )
    plan = parse_plan(tomllib.loads(PLAN), source="emb.toml", text=PLAN)
    async with (
        embedded_hosts(
            tmp_path, catalog, hosts=("esx-a", "esx-b"), settings=settings, boot_read_bytes=1 * MiB
        ) as env,
        LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
    ):
        run = await lr.run_plan(plan)
        with anyio.fail_after(90):
            summary = await run.wait()
        assert summary["state"] == "completed", summary
        rows = {r["vm"]: r for r in summary["vms"]}
        assert {r["state"] for r in rows.values()} == {"completed"}
        # least-loaded without memory facts spreads evenly: db1 is on esx-a, so one app each
        assert rows["db1"]["host"] == "esx-a"
        assert {rows["app1"]["host"], rows["app2"]["host"]} == {"esx-a", "esx-b"}
        assert all(r["power_on_s"] is not None and r["bytes_served"] > 0 for r in rows.values())
        assert rows["db1"]["power_on_s"] < min(
            rows["app1"]["power_on_s"], rows["app2"]["power_on_s"]
        )
        # every migrated disk equals the backup plus the guest's writes, on its own host
        for job in lr.jobs():
            summary_vm = job.summary().vm_ref
            assert summary_vm is not None
            esx, ref = env.hosts.owner(summary_vm)
            await esx.power_off(ref)
            point = await catalog.restore_point(job.spec.vm)
            reader = await catalog.open_disk(point, point.disks[0])
            assert await verify_disk(esx, ref, 0, reader, esx.guest_writes(ref))
        # one export per host, both gone after the jobs ended
        assert env.server.exports() == {}
