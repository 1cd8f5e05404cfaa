"""The group barrier through a shared directory: records, waits, timeouts, the placement."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest

from liverecovery import LiveRecovery, Settings
from liverecovery.catalog.shared_state import DirectorySharedState
from liverecovery.cluster.placement import place
from liverecovery.errors import PlanError
from liverecovery.job.migration import ManualMigration
from liverecovery.plan.barrier import SharedStateBarrier, group_wait_timeout_s
from liverecovery.plan.events import VmChanged
from liverecovery.plan.model import BootGroup, GroupWait, Plan, PlanVm
from liverecovery.plan.parse import parse_plan
from liverecovery.plan.runner import PlanRun
from liverecovery.testing import memory_backends
from liverecovery.testing.memory import MemoryCatalog
from tests.job.helpers import fast_settings

pytestmark = pytest.mark.anyio

PLAN = Plan(
    "p/q",  # not a key part as it is: made safe
    (BootGroup("g 1"), BootGroup("g2")),
    (PlanVm("a", "g 1", "ds", host="h1"), PlanVm("b", "g2", "ds", host="h2")),
)


def barriers(root: Path, nodes: tuple[str, ...] = ("A", "B")) -> list[SharedStateBarrier]:
    state = DirectorySharedState(root)
    return [SharedStateBarrier(state, PLAN, "r1", node=n, nodes=nodes, poll_s=0.02) for n in nodes]


async def test_ready_once_every_node_recorded(tmp_path: Path) -> None:
    a, b = barriers(tmp_path)
    await a.arrive("g 1")
    with anyio.move_on_after(0.2) as scope:
        await a.wait("g 1", 10)
    assert scope.cancelled_caught  # B has not recorded yet
    await b.arrive("g 1")
    with anyio.fail_after(5):
        assert await a.wait("g 1", 10) == ""
    assert a.key("g 1", "A") == "plans/p-q/r1/0-g-1/A"
    assert (tmp_path / "plans/p-q/r1/0-g-1/B").is_file()


async def test_a_stopped_node_stops_the_others_at_once(tmp_path: Path) -> None:
    a, b = barriers(tmp_path, ("A", "B", "C"))[:2]
    await b.arrive("g 1", stopped="db1 failed")
    with anyio.fail_after(5):
        assert await a.wait("g 1", 60) == "node B: db1 failed"


async def test_a_record_is_written_once(tmp_path: Path) -> None:
    a, b = barriers(tmp_path)
    await a.arrive("g2", stopped="cancelled")
    await a.arrive("g2")  # e.g. a resumed run: the first record stands
    await b.arrive("g2")
    assert await b.wait("g2", 5) == "node A: cancelled"


async def test_a_silent_node_times_the_wait_out(tmp_path: Path) -> None:
    a, _ = barriers(tmp_path)
    await a.arrive("g 1")
    with anyio.fail_after(5):
        why = await a.wait("g 1", 0.3)
    assert why == "node(s) B did not report group 'g 1' ready within 0.3 s"


async def test_the_first_placement_recorded_is_everyones(tmp_path: Path) -> None:
    a, b = barriers(tmp_path)
    assert await a.settle_placement({"a": "h1", "b": "h2"}) == {"a": "h1", "b": "h2"}
    assert await b.settle_placement({"a": "h2", "b": "h2"}) == {"a": "h1", "b": "h2"}
    with pytest.raises(PlanError, match=r"placement recorded at plans/p-q/r1/placement"):
        await b.settle_placement({"a": "h1", "c": "h2"})
    (c,) = barriers(tmp_path, ("A", "C"))[:1]
    with pytest.raises(PlanError, match="this node has A, C, another recorded A, B at"):
        await c.settle_placement({"a": "h1", "b": "h2"})


async def test_a_node_starts_a_run_once(tmp_path: Path) -> None:
    a, b = barriers(tmp_path)
    await a.begin()
    await b.begin()
    with pytest.raises(PlanError, match="node 'A' already ran run r1 of plan 'p/q'"):
        await a.begin()


def test_the_wait_timeout_covers_a_job_up_to_power_on_and_the_groups_waits() -> None:
    s = Settings()
    t = s.timeouts
    up_to_power_on = t.preflight + t.export + t.mount + t.stage + t.register + t.power_on
    assert group_wait_timeout_s(s, BootGroup("g")) == up_to_power_on
    heartbeat = BootGroup("g", wait=GroupWait.HEARTBEAT, heartbeat_timeout_s=30, delay_s=5)
    assert group_wait_timeout_s(s, heartbeat) == up_to_power_on + 35


def a_world(tmp_path: Path) -> tuple[Any, Plan, Settings]:
    """Three VMs in groups a, b, all on two hosts node A serves; B is silent."""
    hosts = [h for h in (f"esx{i:02d}" for i in range(40)) if place(h, ["A", "B"]) == "A"][:2]
    backends, _ = memory_backends(hosts=hosts)
    catalog = backends.catalog
    assert isinstance(catalog, MemoryCatalog)
    for vm in ("a1", "a2", "b1"):
        catalog.add_vm(vm, disk_sizes=(64 << 20,), data_per_disk=1 << 16)
    text = (
        f'[plan]\nname = "t"\nhosts = ["{hosts[0]}", "{hosts[1]}"]\nplacement = "round-robin"\n'
        '[defaults]\ndatastore = "datastore1"\n[[group]]\nname = "a"\n[[group]]\nname = "b"\n'
        '[[vm]]\nname = "a1"\ngroup = "a"\n[[vm]]\nname = "a2"\ngroup = "a"\n'
        '[[vm]]\nname = "b1"\ngroup = "b"\n'
    )
    plan = parse_plan(tomllib.loads(text), source="t.toml", text=text)
    shared = tmp_path / "shared"
    settings = fast_settings(
        job_results_dir=tmp_path / "results",
        shared_state=str(shared),
        nodes=("A", "B"),
        node_name="A",
    )
    return backends, plan, settings


async def a_serving(run: PlanRun) -> None:
    serving: set[str] = set()
    with anyio.fail_after(10):
        async for e in run.events():
            if isinstance(e, VmChanged) and e.state.value == "serving":
                serving.add(e.vm)
                if serving == {"a1", "a2"}:
                    return


async def test_a_cancel_ends_the_wait_for_the_other_nodes(tmp_path: Path) -> None:
    backends, plan, settings = a_world(tmp_path)
    async with LiveRecovery(settings, backends, migration_policy=ManualMigration()) as lr:
        run = await lr.run_plan(plan)
        await a_serving(run)
        await anyio.sleep(0.3)  # waiting for B's record of group a
        run.cancel()
        with anyio.fail_after(5):
            summary = await run.wait()
        assert summary["state"] == "cancelled"
        assert {r["vm"]: r["state"] for r in summary["vms"]}["b1"] == "skipped"
    b = SharedStateBarrier(
        DirectorySharedState(tmp_path / "shared"), plan, run.run_id, node="B", nodes=("A", "B")
    )
    await b.arrive("b")
    assert await b.wait("b", 5) == "node A: the plan was cancelled"


async def test_a_resumed_node_still_waits_for_the_others(tmp_path: Path) -> None:
    """Node A's VMs of group a run; B has not reported a; A's process stops and resumes: b1
    starts only once B records a ready."""
    backends, plan, settings = a_world(tmp_path)
    shared = tmp_path / "shared"
    async with LiveRecovery(settings, backends, migration_policy=ManualMigration()) as lr:
        run = await lr.run_plan(plan)
        assert run.part is not None and run.part.vms == ("a1", "a2", "b1")
        await a_serving(run)
        await anyio.sleep(0.5)  # A waits for B's record of group a: b1 does not start
        assert [j.spec.vm for j in lr.jobs()] == ["a1", "a2"]
    b = SharedStateBarrier(
        DirectorySharedState(shared), plan, run.run_id, node="B", nodes=("A", "B")
    )
    async with LiveRecovery(settings, backends, migration_policy=ManualMigration()) as lr2:
        (resumed,) = await lr2.resume_plans()
        await anyio.sleep(0.6)
        assert sorted(j.spec.vm for j in lr2.jobs()) == ["a1", "a2"]  # still waiting for B
        await b.arrive("a")
        with anyio.fail_after(10):
            async for e in resumed.events():
                if isinstance(e, VmChanged) and e.vm == "b1" and e.state.value == "serving":
                    break


async def test_each_node_checks_the_cache_space_of_its_own_part(tmp_path: Path) -> None:
    """Two VMs on A's host, one on B's: with 50 GiB of cache (2 x the 20 GiB floor fit) the
    plan is too big for one node alone but fits each node's part."""
    on_a = next(h for h in (f"esx{i:02d}" for i in range(40)) if place(h, ["A", "B"]) == "A")
    on_b = next(h for h in (f"esx{i:02d}" for i in range(40)) if place(h, ["A", "B"]) == "B")
    backends, _ = memory_backends(hosts=(on_a, on_b), cache_capacity=50 << 30)
    catalog = backends.catalog
    assert isinstance(catalog, MemoryCatalog)
    for vm in ("a1", "a2", "b1"):
        catalog.add_vm(vm, disk_sizes=(64 << 20,), data_per_disk=1 << 16)
    text = '[plan]\nname = "c"\n[defaults]\ndatastore = "datastore1"\n[[group]]\nname = "g"\n'
    for vm, host in (("a1", on_a), ("a2", on_a), ("b1", on_b)):
        text += f'[[vm]]\nname = "{vm}"\ngroup = "g"\nhost = "{host}"\n'
    plan = parse_plan(tomllib.loads(text), source="c.toml", text=text)
    alone = fast_settings(job_results_dir=tmp_path / "alone")
    async with LiveRecovery(alone, backends) as lr:
        with pytest.raises(PlanError, match=r"the plan's 3 VMs need 60\.00 GiB of cache space"):
            await lr.run_plan(plan)
    a = fast_settings(
        job_results_dir=tmp_path / "a",
        shared_state=str(tmp_path / "s"),
        nodes=("A", "B"),
        node_name="A",
    )
    async with LiveRecovery(a, backends) as lr:
        run = await lr.run_plan(plan)
        assert [r.vm for r in run.rows()] == ["a1", "a2"]
        run.cancel()
        with anyio.fail_after(30):
            await run.wait()
