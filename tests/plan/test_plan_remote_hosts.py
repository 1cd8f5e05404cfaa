"""A plan whose simulated ESX hosts each run in a process of their own (benchmarks/plan.py's
``--hosts-mode remote``), over our real NFS server, end to end."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import anyio
import pytest

from liverecovery import LiveRecovery, Settings
from liverecovery.config import MiB
from liverecovery.job.states import State
from liverecovery.plan.parse import parse_plan
from liverecovery.sim.remote_hosts import remote_embedded_hosts
from liverecovery.testing import MemoryCatalog

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(150)]

PLAN = """\
[plan]
name = "remote"
hosts = ["esx-a", "esx-b"]
placement = "round-robin"

[defaults]
datastore = "datastore1"
esx_address = "127.0.0.1"

[[group]]
name = "app"

[[vm]]
name = "app1"
group = "app"

[[vm]]
name = "app2"
group = "app"
"""


async def test_a_plan_on_two_host_processes(tmp_path: Path) -> None:
    catalog = MemoryCatalog()
    for vm in ("app1", "app2"):
        catalog.add_vm(vm, disk_sizes=(32 * MiB,), data_per_disk=2 * MiB)
    settings = Settings(
        job_results_dir=tmp_path / "results",
        migration_trigger="delay",
        serve_before_migrate_s=2.0,  # the READ below happens while it serves
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        compensation_retry_delay_s=0,
    )
    plan = parse_plan(tomllib.loads(PLAN), source="remote.toml", text=PLAN)
    async with (
        remote_embedded_hosts(
            tmp_path, catalog, hosts=("esx-a", "esx-b"), settings=settings, boot_read_bytes=MiB
        ) as env,
        LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
    ):
        processes = list(env.hosts._processes)
        pids = {p.pid for p in processes}
        assert len(pids) == 2 and os.getpid() not in pids
        run = await lr.run_plan(plan)
        served: list[float | None] = []
        with anyio.fail_after(120):
            while not any(j.state is State.SERVING and j.vm is not None for j in lr.jobs()):
                await anyio.sleep(0.01)
            job = next(j for j in lr.jobs() if j.state is State.SERVING and j.vm is not None)
            assert job.vm is not None
            esx, ref = env.hosts.owner(job.vm)
            served.append(await esx.timed_read(ref, 0, 64 * 1024))
            summary = await run.wait()
        assert summary["state"] == "completed", summary
        rows = {r["vm"]: r for r in summary["vms"]}
        assert {r["host"] for r in rows.values()} == {"esx-a", "esx-b"}
        assert all(r["state"] == "completed" and r["bytes_served"] > 0 for r in rows.values())
        # served over NFS while it ran (a READ timed in the host's process), local after
        assert served[0] is not None and served[0] > 0
        for job in lr.jobs():
            vm = job.summary().vm_ref
            assert vm is not None
            esx, ref = env.hosts.owner(vm)
            status = await esx.vm_status(ref)
            assert status["powered_on"] and status["migrated"], status
            assert await esx.timed_read(ref, 0, 4096) is None
            path = await esx.disk_path(ref, 0)
            assert path is not None and path.is_file()
            assert (await catalog.restore_point(job.spec.vm)) is not None
    assert all(p.returncode is not None for p in processes)  # the host processes are gone
