"""Running plans on the in-memory backends: group order, failure policies, limits, slots, resume."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from typing import Any

import anyio
import attrs
import pytest

from liverecovery import LiveRecovery, Settings
from liverecovery.errors import PlanError
from liverecovery.job.migration import ManualMigration
from liverecovery.job.states import HAPPY_PATH, State
from liverecovery.plan.events import GroupSkipped, PlanEvent, VmChanged
from liverecovery.plan.model import Placement, Plan
from liverecovery.plan.parse import parse_plan
from liverecovery.plan.runner import PlanRun
from liverecovery.testing import memory_backends
from liverecovery.testing.memory import MemoryCatalog, MemoryVSphere
from tests.job.helpers import fast_settings

pytestmark = pytest.mark.anyio

HOSTS = ("esx01", "esx02")
BEFORE_POWER_ON = {s.value for s in HAPPY_PATH[: HAPPY_PATH.index(State.SERVING)]}


def world(vms: Sequence[str], hosts: Sequence[str] = HOSTS) -> Any:
    backends, faults = memory_backends(hosts=hosts)
    catalog = backends.catalog
    assert isinstance(catalog, MemoryCatalog)
    for vm in vms:
        catalog.add_vm(vm, disk_sizes=(64 << 20,), data_per_disk=1 << 16)
    return backends, faults


def plan_text(groups: dict[str, list[str]], *, extra: str = "", group_keys: str = "") -> str:
    text = f'[plan]\nname = "t"\nhosts = {list(HOSTS)!r}\nplacement = "round-robin"\n{extra}\n'
    text += '[defaults]\ndatastore = "datastore1"\n'
    for g in groups:
        text += f'[[group]]\nname = "{g}"\n{group_keys}\n'
    for g, vms in groups.items():
        for vm in vms:
            text += f'[[vm]]\nname = "{vm}"\ngroup = "{g}"\n'
    return text.replace("'", '"')


def plan_of(text: str) -> Plan:
    return parse_plan(tomllib.loads(text), source="t.toml", text=text)


async def finish(run: PlanRun) -> tuple[dict[str, Any], list[PlanEvent]]:
    with anyio.fail_after(30):
        summary = await run.wait()
    return summary, [e async for e in run.events()]


async def test_groups_start_in_order_each_vm_its_own_job() -> None:
    backends, _ = world(["db1", "db2", "app1", "app2", "web1"])
    plan = plan_of(plan_text({"db": ["db1", "db2"], "app": ["app1", "app2"], "web": ["web1"]}))
    async with LiveRecovery(fast_settings(), backends) as lr:
        run = await lr.run_plan(plan)
        summary, events = await finish(run)
        assert summary["state"] == "completed"
        assert {r["state"] for r in summary["vms"]} == {"completed"}
        assert len(lr.jobs()) == 5
        assert {j.id for j in lr.jobs()} == {r["job_id"] for r in summary["vms"]}
    changes = [e for e in events if isinstance(e, VmChanged)]
    first_start = {}
    powered = {}
    for i, e in enumerate(changes):
        first_start.setdefault(e.group, i)
        if e.state.value == "serving":
            powered[e.vm] = i
    assert max(powered["db1"], powered["db2"]) < first_start["app"]
    assert max(powered["app1"], powered["app2"]) < first_start["web"]
    # round-robin over the two hosts, in plan order
    hosts = {r["vm"]: r["host"] for r in summary["vms"]}
    assert [hosts[v] for v in ("db1", "db2", "app1", "app2", "web1")] == [
        "esx01",
        "esx02",
        "esx01",
        "esx02",
        "esx01",
    ]


@pytest.mark.parametrize("policy", ["stop", "continue"])
async def test_failure_policy(policy: str) -> None:
    backends, faults = world(["db1", "app1"])
    plan = plan_of(
        plan_text({"db": ["db1"], "app": ["app1"]}, group_keys=f'on_failure = "{policy}"')
    )
    faults.fail("vsphere.power_on")
    async with LiveRecovery(fast_settings(), backends) as lr:
        run = await lr.run_plan(plan)
        summary, events = await finish(run)
    states = {r["vm"]: r["state"] for r in summary["vms"]}
    assert states["db1"] == "failed"
    if policy == "stop":
        assert summary["state"] == "stopped"
        assert states["app1"] == "skipped"
        assert [e.group for e in events if isinstance(e, GroupSkipped)] == ["app"]
        assert [j.spec.vm for j in lr.jobs()] == ["db1"]
    else:
        assert summary["state"] == "completed with failures"
        assert states["app1"] == "completed"


async def test_a_plan_over_the_hosts_nfs_limit_is_refused_before_anything_starts() -> None:
    backends, _ = world(["a", "b", "c"])
    vsphere = backends.vsphere
    assert isinstance(vsphere, MemoryVSphere)
    vsphere.max_nfs_volumes = 2
    vsphere.datastores["esx02"] = {"nfs-a": ("filer", "/a"), "nfs-b": ("filer", "/b")}
    plan = plan_of(plan_text({"g": ["a", "b", "c"]}))
    async with LiveRecovery(fast_settings(), backends) as lr:
        with pytest.raises(PlanError) as info:
            await lr.run_plan(plan)
        assert lr.jobs() == []
    assert backends.exporter.exports() == {}
    (problem,) = info.value.problems
    assert "host 'esx02' already mounts 2 NFS datastores" in problem
    assert "NFS.MaxVolumes is 2" in problem
    assert "1 VM(s)" in problem


async def test_unknown_vms_and_hosts_are_all_refused_with_lines() -> None:
    backends, _ = world(["a"], hosts=("esx01",))
    plan = plan_of(plan_text({"g": ["a", "ghost", "phantom"]}))
    async with LiveRecovery(fast_settings(), backends) as lr:
        with pytest.raises(PlanError) as info:
            await lr.run_plan(plan)
        assert lr.jobs() == []
    text = "\n".join(info.value.problems)
    assert "t.toml:3: host 'esx02' is not in the vSphere inventory" in text
    assert "vm 'ghost' is not in the backup catalog" in text
    assert "vm 'phantom' is not in the backup catalog" in text
    assert len(info.value.problems) == 3


async def test_max_in_flight_bounds_jobs_between_start_and_power_on() -> None:
    vms = [f"vm{i}" for i in range(6)]
    backends, faults = world(vms)
    faults.slow("vsphere.power_on", 0.02)
    plan = plan_of(plan_text({"g": vms}, extra="max_in_flight = 2"))
    async with LiveRecovery(fast_settings(), backends) as lr:
        run = await lr.run_plan(plan)
        _, events = await finish(run)
    starting: set[str] = set()
    most = 0
    for e in events:
        if not isinstance(e, VmChanged):
            continue
        if e.state.value in BEFORE_POWER_ON:
            starting.add(e.vm)
        else:
            starting.discard(e.vm)
        most = max(most, len(starting))
    assert most == 2


async def test_storage_vmotions_are_limited_per_host_and_per_process() -> None:
    vms = [f"vm{i}" for i in range(6)]
    backends, _faults = world(vms)
    vsphere = backends.vsphere
    assert isinstance(vsphere, MemoryVSphere)
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    relocate = vsphere.relocate

    async def counting(vm: Any, datastore: str, progress: Any = None) -> Any:
        host = vsphere.vms[vm.moref].host
        running[host] = running.get(host, 0) + 1
        running["all"] = running.get("all", 0) + 1
        for k in (host, "all"):
            most[k] = max(most.get(k, 0), running[k])
        try:
            await anyio.sleep(0.05)
            return await relocate(vm, datastore, progress)
        finally:
            running[host] -= 1
            running["all"] -= 1

    vsphere.relocate = counting  # type: ignore[method-assign]
    plan = plan_of(plan_text({"g": vms}, extra="max_in_flight = 6"))
    settings = fast_settings(max_migrations=3, max_migrations_per_host=1)
    async with LiveRecovery(settings, backends) as lr:
        summary, _ = await finish(await lr.run_plan(plan))
    assert summary["state"] == "completed"
    assert most["esx01"] == most["esx02"] == 1
    assert most["all"] == 2


async def test_cancel_starts_no_more_groups_and_leaves_running_vms_running() -> None:
    backends, _ = world(["a1", "b1"])
    plan = plan_of(plan_text({"a": ["a1"], "b": ["b1"]}, group_keys="delay_s = 30"))
    async with LiveRecovery(fast_settings(), backends, migration_policy=ManualMigration()) as lr:
        run = await lr.run_plan(plan)
        with anyio.fail_after(10):
            async for e in run.events():
                if isinstance(e, VmChanged) and e.state.value == "serving":
                    break
        run.cancel()
        with anyio.fail_after(40):
            summary = await run.wait()
        assert summary["state"] == "cancelled"
        states = {r["vm"]: r["state"] for r in summary["vms"]}
        assert states == {"a1": "serving", "b1": "skipped"}
        vsphere = backends.vsphere
        assert isinstance(vsphere, MemoryVSphere)
        assert [v.powered_on for v in vsphere.vms.values()] == [True]
    # leaving LiveRecovery leaves the VM running (production)
    assert [v.powered_on for v in vsphere.vms.values()] == [True]


async def test_a_half_run_plan_resumes_where_it_was(tmp_path: Any) -> None:
    backends, _ = world(["a1", "a2", "b1"])
    plan = plan_of(plan_text({"a": ["a1", "a2"], "b": ["b1"]}, group_keys="delay_s = 0.5"))
    settings = fast_settings(job_results_dir=tmp_path / "results")
    vsphere = backends.vsphere
    assert isinstance(vsphere, MemoryVSphere)
    async with LiveRecovery(settings, backends, migration_policy=ManualMigration()) as lr:
        run = await lr.run_plan(plan)
        serving: set[str] = set()
        with anyio.fail_after(10):
            async for e in run.events():
                if isinstance(e, VmChanged) and e.state.value == "serving":
                    serving.add(e.vm)
                    if serving == {"a1", "a2"}:
                        break
        # the process "stops" before group a's delay has passed: b1 never started
    assert [j.spec.vm for j in lr.jobs()] == ["a1", "a2"]
    on_before = {m: v.powered_on for m, v in vsphere.vms.items()}
    assert list(on_before.values()) == [True, True]

    async with LiveRecovery(settings, backends, migration_policy=ManualMigration()) as lr2:
        (resumed,) = await lr2.resume_plans()
        assert resumed.run_id == run.run_id
        with anyio.fail_after(10):
            async for e in resumed.events():
                if isinstance(e, VmChanged) and e.vm == "b1" and e.state.value == "serving":
                    break
        states = {r.vm: r.state for r in resumed.rows()}
        assert states == {"a1": "serving", "a2": "serving", "b1": "serving"}
        # a1 and a2 were adopted (same jobs, same VMs), never powered off or started again
        assert {m: v.powered_on for m, v in vsphere.vms.items() if m in on_before} == on_before
        assert len(vsphere.vms) == 3
        assert sorted(j.spec.vm for j in lr2.jobs()) == ["a1", "a2", "b1"]


def test_settings_for_migration_slots() -> None:
    s = Settings(max_migrations=8, max_migrations_per_host=3)
    assert (s.max_migrations, s.max_migrations_per_host) == (8, 3)
    with pytest.raises(ValueError, match="max_migrations_per_host"):
        Settings(max_migrations_per_host=0)


class _Tools:
    def __init__(self, heartbeat: str) -> None:
        self.heartbeat = heartbeat


class HeartbeatVSphere(MemoryVSphere):
    """Guests report a heartbeat only after ``beats_after`` questions about them."""

    def __init__(self, beats_after: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.beats_after = beats_after
        self.asked: dict[str, int] = {}

    async def guest_info(self, vm: Any) -> _Tools:
        self.asked[vm.name] = self.asked.get(vm.name, 0) + 1
        return _Tools("green" if self.asked[vm.name] > self.beats_after else "gray")


@pytest.mark.parametrize("beats_after", [2, 1000])
async def test_a_heartbeat_group_waits_for_its_guests(beats_after: int) -> None:
    import attrs

    backends, _ = world(["db1", "app1"])
    vsphere = HeartbeatVSphere(beats_after, hosts=HOSTS)
    backends = attrs.evolve(backends, vsphere=vsphere, inventory=vsphere)
    text = plan_text({"db": ["db1"], "app": ["app1"]}).replace(
        'name = "db"\n', 'name = "db"\nwait = "heartbeat"\nheartbeat_timeout_s = 2.5\n'
    )
    async with LiveRecovery(fast_settings(), backends) as lr:
        summary, events = await finish(await lr.run_plan(plan_of(text)))
    assert summary["state"] == "completed"
    ready = next(
        e for e in events if getattr(e, "group", None) == "db" and type(e).__name__ == "GroupReady"
    )
    app_start = next(e for e in events if isinstance(e, VmChanged) and e.vm == "app1")
    assert ready.at <= app_start.at
    if beats_after == 2:
        assert vsphere.asked["db1"] == 3  # asked until it beat, then no more
        assert not any("no guest heartbeat" in getattr(e, "message", "") for e in events)
    else:
        warning = [e for e in events if "no guest heartbeat" in getattr(e, "message", "")]
        assert warning and "db1" in warning[0].message and "2.5 s" in warning[0].message
        assert ready.at >= 2.5


async def test_least_loaded_uses_the_hosts_free_memory() -> None:
    backends, _ = world(["a", "b", "c"])
    vsphere = backends.vsphere
    assert isinstance(vsphere, MemoryVSphere)
    vsphere.host_free = {"esx01": (3 << 30, 1000), "esx02": (64 << 30, 1000)}
    text = plan_text({"g": ["a", "b", "c"]}).replace("round-robin", "least-loaded")
    async with LiveRecovery(fast_settings(), backends) as lr:
        summary, _ = await finish(await lr.run_plan(plan_of(text)))
    # each VM has 2 GiB of memory: all three fit best on esx02 (64 GiB free against 3)
    assert {r["host"] for r in summary["vms"]} == {"esx02"}


async def test_a_host_in_maintenance_is_refused_before_anything_starts() -> None:
    backends, _ = world(["a", "b"])
    vsphere = backends.vsphere
    assert isinstance(vsphere, MemoryVSphere)
    vsphere.maintenance.add("esx02")
    async with LiveRecovery(fast_settings(), backends) as lr:
        with pytest.raises(PlanError, match="host 'esx02' is in maintenance mode"):
            await lr.run_plan(plan_of(plan_text({"g": ["a", "b"]})))
        assert lr.jobs() == []
    assert backends.exporter.exports() == {}


async def test_a_plan_needing_more_cache_than_there_is_is_refused_up_front() -> None:
    backends, _ = memory_backends(hosts=HOSTS, cache_capacity=50 << 30)
    catalog = backends.catalog
    assert isinstance(catalog, MemoryCatalog)
    for vm in ("a", "b", "c"):
        catalog.add_vm(vm, disk_sizes=(64 << 20,), data_per_disk=1 << 16)
    async with LiveRecovery(fast_settings(), backends) as lr:
        with pytest.raises(PlanError) as info:
            await lr.run_plan(plan_of(plan_text({"g": ["a", "b", "c"]})))
        assert lr.jobs() == []
    (problem,) = info.value.problems
    assert "the plan's 3 VMs need 60.00 GiB of cache space together" in problem
    # two of them fit (2 x the 20 GiB floor, 5 % of 50 GiB kept free)
    async with LiveRecovery(fast_settings(), backends) as lr:
        summary, _ = await finish(await lr.run_plan(plan_of(plan_text({"g": ["a", "b"]}))))
    assert summary["state"] == "completed"


async def test_a_plan_that_cannot_keep_its_journal_does_not_start(tmp_path: Any) -> None:
    from liverecovery.errors import BackendError

    backends, _ = world(["a"])
    (tmp_path / "plans").write_text("not a folder")
    async with LiveRecovery(fast_settings(job_results_dir=tmp_path), backends) as lr:
        with pytest.raises(BackendError, match="cannot write the plan journal"):
            await lr.run_plan(plan_of(plan_text({"g": ["a"]})))
        assert lr.jobs() == [] and lr.plans() == []


async def test_a_plan_built_in_python_is_checked_before_anything_starts(tmp_path: Any) -> None:
    from liverecovery import BootGroup, PlanVm

    backends, _ = world(["a"])
    plan = Plan(
        name="../../escape",  # would be a path outside the plan journals' folder
        groups=(BootGroup("g", after=("missing",)),),
        vms=(PlanVm("a", "g", "datastore1"),),
        hosts=HOSTS,
        placement=Placement.ROUND_ROBIN,
    )
    settings = attrs.evolve(fast_settings(), job_results_dir=tmp_path, journal=True)
    async with LiveRecovery(settings, backends) as lr:
        with pytest.raises(PlanError) as info:
            await lr.run_plan(plan)
        assert lr.jobs() == [] and lr.plans() == []
    assert len(info.value.problems) == 2, info.value.problems
    assert "after names unknown group 'missing'" in info.value.problems[1]
    assert not (tmp_path / "plans").exists() and not tmp_path.parent.joinpath("escape").exists()
