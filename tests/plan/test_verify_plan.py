"""Verifying a plan on the in-memory backends: boot groups, failure policies, the in-flight
bound, a cancel, the report; after every outcome nothing is registered, mounted, exported or
left on disk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from liverecovery import LiveRecovery
from liverecovery.errors import PlanError, VerificationRefusedError
from liverecovery.plan.verify_report import PlanVerificationReport
from liverecovery.testing import memory_backends
from liverecovery.testing.memory import (
    MemoryBlockCache,
    MemoryCatalog,
    MemoryDisk,
    MemoryExporter,
    MemoryVSphere,
)
from liverecovery.verify.checks import Check
from tests.plan.test_runner import plan_of, plan_text
from tests.verify.helpers import BOOTABLE, DISK, jobs_dir_empty, options, settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

HOSTS = ("esx01", "esx02")
CHECKS = [Check("partitions"), Check("heartbeat", timeout_s=2)]


class World:
    def __init__(self, vms: Sequence[str]) -> None:
        self.backends, self.faults = memory_backends(hosts=HOSTS)
        assert isinstance(self.backends.catalog, MemoryCatalog)
        assert isinstance(self.backends.vsphere, MemoryVSphere)
        assert isinstance(self.backends.exporter, MemoryExporter)
        assert isinstance(self.backends.cache, MemoryBlockCache)
        self.catalog = self.backends.catalog
        self.vsphere = self.backends.vsphere
        self.exporter = self.backends.exporter
        self.cache = self.backends.cache
        for vm in vms:
            backup = self.catalog.add_vm(vm, disk_sizes=(DISK,))
            backup.disks[f"{vm}_0.vmdk"] = MemoryDisk(DISK, BOOTABLE)
        self.settings = settings(job_space_floor_bytes=0, cache_min_free_percent=0)

    def leftovers(self) -> dict[str, object]:
        return {
            "exports": dict(self.exporter.exports()),
            "published": list(self.exporter.published),
            "mounts": {h: m for h, m in self.vsphere.datastores.items() if m},
            "vms": [v.ref.name for v in self.vsphere.vms.values()],
            "reservations": dict(self.cache.reservations()),
        }

    def assert_clean(self) -> None:
        assert not any(self.leftovers().values()), self.leftovers()
        assert jobs_dir_empty(self.settings)


GROUPS = {"db": ["db1", "db2"], "app": ["app1", "app2"], "web": ["web1"]}
VMS = [vm for vms in GROUPS.values() for vm in vms]


def verification_name(report: PlanVerificationReport, vm: str) -> str:
    record = next(r for r in report.vms if r.vm == vm)
    return f"{vm}-verify-{record.job_id}"


async def test_every_vm_verified_in_group_order_and_undone() -> None:
    w = World(VMS)
    w.vsphere.guest.heartbeat_delay_s = 0.05
    plan = plan_of(plan_text(GROUPS))
    order: list[str] = []
    register = w.vsphere.register_vm

    async def spy(*args: Any, **kw: Any) -> Any:
        ref = await register(*args, **kw)
        order.append(ref.name.split("-verify-")[0])
        # copies of earlier groups are still registered when a later group registers
        return ref

    w.vsphere.register_vm = spy  # type: ignore[method-assign]
    async with LiveRecovery(w.settings, w.backends) as lr:
        report = await lr.verify_plan(plan, CHECKS, options())
    assert report.passed, report.to_markdown()
    assert report.all_booted
    assert report.slowest_time_to_heartbeat_s is not None
    assert report.slowest_time_to_heartbeat_s >= 0.05
    groups = {vm: g for g, vms in GROUPS.items() for vm in vms}
    ranks = [list(GROUPS).index(groups[vm]) for vm in order]
    assert ranks == sorted(ranks), order
    assert {r.host for r in report.vms} == set(HOSTS)
    for record in report.vms:
        assert record.report is not None and record.report.passed
        assert record.report.verification_vm.startswith(f"{record.vm}-verify-")
    w.assert_clean()
    data = json.loads((report.report_dir / "plan-report.json").read_text())  # type: ignore[operator]
    assert data["schema"] == 1 and data["passed"] is True
    assert data["totals"]["vms"] == 5 and data["totals"]["all_booted"] is True
    assert data["vms"][0]["report"]["schema"] == 1
    assert (
        (report.report_dir / "plan-report.md")
        .read_text()
        .startswith(  # type: ignore[operator]
            "# Verification of plan t: PASSED"
        )
    )
    for record in report.vms:
        assert (report.report_dir / record.job_id / "report.json").exists()  # type: ignore[operator]


async def test_earlier_copies_run_while_a_later_group_boots() -> None:
    w = World(["db1", "app1"])
    plan = plan_of(plan_text({"db": ["db1"], "app": ["app1"]}))
    seen: list[list[str]] = []
    register = w.vsphere.register_vm

    async def spy(*args: Any, **kw: Any) -> Any:
        seen.append([v.ref.name for v in w.vsphere.vms.values() if v.powered_on])
        return await register(*args, **kw)

    w.vsphere.register_vm = spy  # type: ignore[method-assign]
    async with LiveRecovery(w.settings, w.backends) as lr:
        report = await lr.verify_plan(plan, CHECKS, options())
    assert report.passed
    assert seen[0] == []
    assert [n.split("-verify-")[0] for n in seen[1]] == ["db1"]
    w.assert_clean()


@pytest.mark.parametrize("policy", ["stop", "continue"])
async def test_a_guest_that_never_heartbeats_under_each_policy(policy: str) -> None:
    w = World(VMS)
    plan = plan_of(plan_text(GROUPS, group_keys=f'on_failure = "{policy}"'))
    # the verification names hold the run id: fail every copy of db2 whatever its name
    w.vsphere.guest.never_heartbeat = _Prefix("db2-verify-")  # type: ignore[assignment]
    async with LiveRecovery(w.settings, w.backends) as lr:
        report = await lr.verify_plan(plan, CHECKS, options())
    assert not report.passed
    outcomes = {r.vm: r.outcome for r in report.vms}
    assert outcomes["db2"] == "failed"
    assert outcomes["db1"] == "passed"
    db2 = next(r for r in report.vms if r.vm == "db2")
    assert db2.report is not None and "heartbeat: timed_out" in "; ".join(db2.report.failures)
    assert not report.all_booted and report.slowest_time_to_heartbeat_s is None
    if policy == "stop":
        assert {outcomes[v] for v in ("app1", "app2", "web1")} == {"not_run"}
        assert "group 'db' failed and its on_failure is stop" in report.stopped
        assert [g.ran for g in report.groups] == [True, False, False]
    else:
        assert {outcomes[v] for v in ("app1", "app2", "web1")} == {"passed"}
        assert report.stopped == ""
    w.assert_clean()


class _Prefix(set[str]):
    """A set holding every name with the prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.startswith(self.prefix)


async def test_a_cancel_in_the_middle_of_group_two_undoes_everything() -> None:
    w = World(VMS)
    w.vsphere.guest.never_heartbeat = _Prefix("app")  # type: ignore[assignment]
    plan = plan_of(plan_text(GROUPS))
    cancel = anyio.Event()
    async with LiveRecovery(w.settings, w.backends) as lr, anyio.create_task_group() as tg:

        async def cancel_in_group_two() -> None:
            while not any(
                v.ref.name.startswith("app") and v.powered_on for v in w.vsphere.vms.values()
            ):
                await anyio.sleep(0.01)
            cancel.set()

        tg.start_soon(cancel_in_group_two)
        report = await lr.verify_plan(
            plan, [*CHECKS[:1], Check("heartbeat", timeout_s=30)], options(), cancel=cancel
        )
    assert report.cancelled and not report.passed
    outcomes = {r.vm: r.outcome for r in report.vms}
    assert outcomes["db1"] == outcomes["db2"] == "passed"
    assert outcomes["web1"] == "not_run"
    app = [r for r in report.vms if r.group == "app"]
    assert all(r.report is not None and r.report.cancelled for r in app if r.outcome != "not_run")
    assert [g.ran for g in report.groups] == [True, True, False]
    w.assert_clean()


async def test_max_in_flight_bounds_copies_between_start_and_power_on() -> None:
    vms = [f"vm{i}" for i in range(6)]
    w = World(vms)
    plan = plan_of(plan_text({"all": vms}, extra="max_in_flight = 2"))
    booting = 0
    most = 0
    register, power_on = w.vsphere.register_vm, w.vsphere.power_on

    async def reg(*args: Any, **kw: Any) -> Any:
        nonlocal booting, most
        booting += 1
        most = max(most, booting)
        await anyio.sleep(0.02)
        return await register(*args, **kw)

    async def on(vm: Any) -> None:
        nonlocal booting
        await power_on(vm)
        booting -= 1

    w.vsphere.register_vm = reg  # type: ignore[method-assign]
    w.vsphere.power_on = on  # type: ignore[method-assign]
    async with LiveRecovery(w.settings, w.backends) as lr:
        report = await lr.verify_plan(plan, CHECKS, options())
    assert report.passed, report.to_markdown()
    assert most == 2
    w.assert_clean()


async def test_a_plan_over_the_limits_or_with_bad_checks_is_refused_before_anything() -> None:
    w = World(["db1"])
    plan = plan_of(plan_text({"db": ["db1", "nosuch"]}))
    async with LiveRecovery(w.settings, w.backends) as lr:
        with pytest.raises(PlanError) as err:
            await lr.verify_plan(plan, CHECKS, options())
        assert "nosuch" in str(err.value) + " ".join(err.value.problems)
        with pytest.raises(VerificationRefusedError, match="tcp checks"):
            await lr.verify_plan(
                plan_of(plan_text({"db": ["db1"]})), [Check("tcp", "22")], options()
            )
    assert not list(Path(w.settings.job_results_dir).glob("verify/*"))
    w.assert_clean()


async def test_an_isolated_network_that_does_not_exist_is_refused_before_anything() -> None:
    w = World(["db1", "app1"])
    w.vsphere.networks.add("verify-pg")
    plan = plan_of(plan_text({"db": ["db1"], "app": ["app1"]}))
    async with LiveRecovery(w.settings, w.backends) as lr:
        with pytest.raises(PlanError) as err:
            await lr.verify_plan(plan, CHECKS, options(isolated_network="no-such-pg"))
        assert "no port group 'no-such-pg'" in str(err.value)
        assert "esx01" in str(err.value) and "esx02" in str(err.value)
        assert lr.jobs() == []
        report = await lr.verify_plan(plan, CHECKS, options(isolated_network="verify-pg"))
    assert report.passed, report.to_markdown()
    assert all("verify-pg" in r.report.isolation for r in report.vms if r.report)
    w.assert_clean()


async def test_cancelling_the_callers_scope_undoes_everything_and_writes_the_report() -> None:
    w = World(VMS)
    w.vsphere.guest.never_heartbeat = _Prefix("app")  # type: ignore[assignment]
    plan = plan_of(plan_text(GROUPS))
    async with LiveRecovery(w.settings, w.backends) as lr:
        with anyio.CancelScope() as scope:

            async def cancel_in_group_two() -> None:
                while not any(
                    v.ref.name.startswith("app") and v.powered_on for v in w.vsphere.vms.values()
                ):
                    await anyio.sleep(0.01)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_in_group_two)
                await lr.verify_plan(plan, [Check("heartbeat", timeout_s=30)], options())
        assert scope.cancelled_caught
    w.assert_clean()
    (folder,) = Path(w.settings.job_results_dir).glob("verify/plan-t-*")
    data = json.loads((folder / "plan-report.json").read_text())
    assert data["passed"] is False and data["cancelled"] is True
    assert {v["vm"]: v["outcome"] for v in data["vms"]}["web1"] == "not_run"
