"""Verifying a plan on several simulated ESX hosts over our real NFS server: a pass, a guest
that never heartbeats, a cancel in the middle of group two. After each, nothing is left
registered or mounted on any host, exported by the server, or on disk; the backups are
unchanged."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest

from liverecovery import LiveRecovery, Settings
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.cli.verify import _bootable_sample
from liverecovery.errors import PlanError
from liverecovery.plan.parse import parse_plan
from liverecovery.plan.runner import VmRow
from liverecovery.plan.table import format_table
from liverecovery.plan.verify_report import PlanVerificationReport
from liverecovery.recovery.control import ControlServer, request, socket_path
from liverecovery.sim.hosts import EmbeddedHosts, embedded_hosts
from liverecovery.testing.samples import tree_digests
from liverecovery.verify.checks import Check
from liverecovery.verify.run import VerifyOptions

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

PLAN = """\
[plan]
name = "emb"
hosts = ["esx-a", "esx-b"]
placement = "round-robin"

[defaults]
datastore = "datastore1"
esx_address = "127.0.0.1"

[[group]]
name = "db"
wait = "heartbeat"

[[group]]
name = "app"
on_failure = "POLICY"

[[group]]
name = "web"

[[vm]]
name = "db1"
group = "db"

[[vm]]
name = "app1"
group = "app"

[[vm]]
name = "app2"
group = "app"

[[vm]]
name = "web1"
group = "web"
"""

VMS = ("db1", "app1", "app2", "web1")


class _Prefix(set[str]):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.startswith(self.prefix)


def _left(env: EmbeddedHosts, work: Path) -> dict[str, object]:
    hosts = env.hosts.hosts.values()
    return {
        "vms": [v.ref.name for h in hosts for v in h.vms.values()],
        "mounts": [m for h in hosts for m in h.mounts],
        "exports": sorted(env.server.exports()),
        "job_folders": sorted(p.name for p in (work / "results" / "jobs").glob("*")),
    }


async def _verify(
    tmp_path: Path,
    *,
    policy: str = "continue",
    never: str | None = None,
    cancel_in_app: bool = False,
    control: list[dict[str, Any]] | None = None,
) -> PlanVerificationReport:
    backup = tmp_path / "backup"
    for vm in VMS:
        _bootable_sample(vm, 32 << 20).write(backup)
    before = tree_digests(backup)
    text = PLAN.replace("POLICY", policy)
    plan = parse_plan(tomllib.loads(text), source="emb.toml", text=text)
    settings = Settings(
        job_results_dir=tmp_path / "results",
        job_space_floor_bytes=0,
        cache_min_free_percent=0,
        compensation_retry_delay_s=0,
    )
    cancel = anyio.Event()
    async with (
        DirectoryCatalog(backup) as catalog,
        embedded_hosts(tmp_path, catalog, hosts=plan.hosts, settings=settings) as env,
    ):
        for host in env.hosts.hosts.values():
            host.guest.heartbeat_delay_s = 0.1
            if never:
                host.guest.never_heartbeat = _Prefix(never)
        async with (
            LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
            anyio.create_task_group() as tg,
        ):

            async def cancel_once_app_runs() -> None:
                def app_on() -> bool:
                    return any(
                        v.ref.name.startswith("app") and v.powered_on
                        for h in env.hosts.hosts.values()
                        for v in h.vms.values()
                    )

                while not app_on():
                    await anyio.sleep(0.01)
                cancel.set()

            async def cancel_through_the_control_socket(seen: list[dict[str, Any]]) -> None:
                # what ``plan status`` and ``plan cancel`` send, from another process
                path = socket_path(env.settings.job_results_dir)
                await tg.start(ControlServer(lr, path).serve)
                with anyio.fail_after(60):
                    while True:
                        status = await request(path, {"op": "plan_status"})
                        seen.append(status)
                        states = {r["vm"]: r["state"] for p in status["plans"] for r in p["vms"]}
                        if states.get("app1") == "serving" or states.get("app2") == "serving":
                            break
                        await anyio.sleep(0.02)
                    seen.append(await request(path, {"op": "plan_cancel", "plan": "emb"}))
                    seen.append(await request(path, {"op": "plan_status"}))

            if cancel_in_app:
                tg.start_soon(cancel_once_app_runs)
            if control is not None:
                tg.start_soon(cancel_through_the_control_socket, control)
            report = await lr.verify_plan(
                plan,
                [Check("partitions"), Check("heartbeat", timeout_s=3 if never else 30)],
                VerifyOptions(poll_s=0.05),
                cancel=cancel,
            )
            tg.cancel_scope.cancel()
        left = _left(env, tmp_path)
    assert not any(left.values()), left
    assert tree_digests(backup) == before
    return report


async def test_a_plan_verifies_on_two_simulated_hosts(tmp_path: Path) -> None:
    report = await _verify(tmp_path)
    assert report.passed, report.to_markdown()
    assert {r.host for r in report.vms} == {"esx-a", "esx-b"}
    assert report.slowest_time_to_heartbeat_s is not None
    assert report.slowest_time_to_heartbeat_s >= 0.1
    assert all(r.report is not None and r.report.cleanup_clean for r in report.vms)


@pytest.mark.parametrize("policy", ["stop", "continue"])
async def test_a_guest_that_never_heartbeats(tmp_path: Path, policy: str) -> None:
    report = await _verify(tmp_path, policy=policy, never="app2-verify-")
    outcomes = {r.vm: r.outcome for r in report.vms}
    assert outcomes["app2"] == "failed" and outcomes["db1"] == outcomes["app1"] == "passed"
    assert outcomes["web1"] == ("not_run" if policy == "stop" else "passed")
    assert not report.passed and not report.all_booted


async def test_a_cancel_in_the_middle_of_group_two(tmp_path: Path) -> None:
    report = await _verify(tmp_path, never="app", cancel_in_app=True)
    assert report.cancelled and not report.passed
    outcomes = {r.vm: r.outcome for r in report.vms}
    assert outcomes["db1"] == "passed"
    assert outcomes["web1"] == "not_run"
    assert [g.ran for g in report.groups] == [True, True, False]


async def test_plan_status_and_cancel_reach_a_plan_verification(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    report = await _verify(tmp_path, never="app", control=seen)
    # status saw the verification with its table, the copies of group app running
    *statuses, cancelled, after = seen
    (plan,) = statuses[-1]["plans"]
    assert plan["kind"] == "verification" and plan["plan"] == "emb"
    assert plan["state"] == "verifying"
    rows = {r["vm"]: r["state"] for r in plan["vms"]}
    assert rows["db1"] == "checks passed" and rows["web1"] == "waiting", rows
    assert "serving" in (rows["app1"], rows["app2"]), rows
    table = format_table([VmRow(**r) for r in plan["vms"]])
    assert table[0].split()[:4] == ["VM", "GROUP", "HOST", "STATE"] and len(table) == 5
    assert cancelled == {
        "plan": "emb",
        "run_id": plan["run_id"],
        "kind": "verification",
        "state": "cancelling",
    }
    assert after["plans"][0]["state"] in ("cancelling", "cancelled")
    # the cancel powered off and undid every copy (``_verify`` asserts nothing is left)
    assert report.cancelled and not report.passed
    outcomes = {r.vm: r.outcome for r in report.vms}
    assert outcomes["db1"] == "passed" and outcomes["web1"] == "not_run"
    for record in report.vms:
        if record.report is not None:
            assert record.report.cleanup_clean, record.report.to_markdown()


LONG = "finance-reporting-database-primary-eu-west-1"  # 44 characters


async def test_long_vm_names_get_copies_within_vsphere_s_limit(tmp_path: Path) -> None:
    """A plan's job id holds the VM's name again: ``<vm>-verify-<job id>`` would be 120
    characters, which vSphere (and the simulated host) refuses; the copy gets a shortened
    name. A VM whose name leaves no room at all is refused before anything starts."""
    backup = tmp_path / "backup"
    too_long = "x" * 70
    for vm in (LONG, too_long):
        _bootable_sample(vm, 32 << 20).write(backup)
    text = (
        '[plan]\nname = "long"\nhosts = ["esx-a"]\nplacement = "round-robin"\n'
        '[defaults]\ndatastore = "datastore1"\nesx_address = "127.0.0.1"\n'
        f'[[group]]\nname = "g"\n[[vm]]\nname = "{LONG}"\ngroup = "g"\n'
    )
    settings = Settings(
        job_results_dir=tmp_path / "results",
        job_space_floor_bytes=0,
        cache_min_free_percent=0,
        compensation_retry_delay_s=0,
    )
    checks = [Check("partitions"), Check("heartbeat", timeout_s=30)]
    async with (
        DirectoryCatalog(backup) as catalog,
        embedded_hosts(tmp_path, catalog, hosts=("esx-a",), settings=settings) as env,
    ):
        for host in env.hosts.hosts.values():
            host.guest.heartbeat_delay_s = 0.1
        async with LiveRecovery(env.settings, env.backends, builder=env.builder) as lr:
            plan = parse_plan(tomllib.loads(text), source="long.toml", text=text)
            report = await lr.verify_plan(plan, checks, VerifyOptions(poll_s=0.05))
            bad = text + f'[[vm]]\nname = "{too_long}"\ngroup = "g"\n'
            plan = parse_plan(tomllib.loads(bad), source="long.toml", text=bad)
            with pytest.raises(PlanError) as info:
                await lr.verify_plan(plan, checks, VerifyOptions(poll_s=0.05))
            assert len(lr.jobs()) == 1  # the first plan's only
        assert not any(_left(env, tmp_path).values())
    assert report.passed, report.to_markdown()
    (record,) = report.vms
    assert record.report is not None
    copy = record.report.verification_vm
    assert copy.startswith(f"{LONG}-verify-") and len(copy) <= 80
    assert len(f"{LONG}-verify-{record.job_id}") > 80
    (problem,) = info.value.problems
    assert problem.startswith("long.toml:13: ") and repr(too_long) in problem
    assert "vSphere's 80-character limit" in problem
