"""One plan run by two serving nodes over one shared state: each runs its part (the VMs whose
ESX host ranks it first), and boot groups start only once the groups before them are ready on
both nodes. Two LiveRecovery instances in one process, each with its own simulated ESX hosts,
NFS server and results folder."""

from __future__ import annotations

import time
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from liverecovery import LiveRecovery, Settings
from liverecovery.backends import VmRef
from liverecovery.cluster.placement import place
from liverecovery.config import MiB
from liverecovery.errors import PlanError, SettingsError, VSphereError
from liverecovery.plan.model import Plan
from liverecovery.plan.parse import parse_plan
from liverecovery.plan.runner import PlanRun
from liverecovery.sim.hosts import EmbeddedHosts, embedded_hosts
from liverecovery.testing import MemoryCatalog

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

NODES = ("A", "B")
VMS = {"db": ("db1", "db2", "db3"), "app": ("app1", "app2", "app3")}


def split_hosts() -> dict[str, list[str]]:
    """Two ESX host names per node (by the same rendezvous rule the plan uses)."""
    found: dict[str, list[str]] = {n: [] for n in NODES}
    i = 0
    while any(len(v) < 2 for v in found.values()):
        name = f"esx-{i}"
        node = place(name, NODES)
        if len(found[node]) < 2:
            found[node].append(name)
        i += 1
    return found


HOSTS = split_hosts()
# each group has VMs on both nodes: db1, db3, app2 on A's hosts; db2, app1, app3 on B's
ON = {
    "db1": HOSTS["A"][0],
    "db2": HOSTS["B"][0],
    "db3": HOSTS["A"][1],
    "app1": HOSTS["B"][1],
    "app2": HOSTS["A"][0],
    "app3": HOSTS["B"][0],
}
ALL_HOSTS = tuple(sorted({h for hs in HOSTS.values() for h in hs}))


def plan_text(db_policy: str = "continue") -> str:
    lines = [
        "[plan]",
        'name = "two"',
        "",
        "[defaults]",
        'datastore = "datastore1"',
        'esx_address = "127.0.0.1"',
        "",
        "[[group]]",
        'name = "db"',
        f'on_failure = "{db_policy}"',
        "",
        "[[group]]",
        'name = "app"',
    ]
    for group, vms in VMS.items():
        for vm in vms:
            lines += ["", "[[vm]]", f'name = "{vm}"', f'group = "{group}"', f'host = "{ON[vm]}"']
    return "\n".join(lines) + "\n"


def load(text: str) -> Plan:
    return parse_plan(tomllib.loads(text), source="two.toml", text=text)


def settings_for(node: str, tmp: Path, shared_state: str) -> Settings:
    return Settings(
        job_results_dir=tmp / node / "results",
        migration_trigger="delay",
        serve_before_migrate_s=0.2,
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        compensation_retry_delay_s=0,
        shared_state=shared_state,
        nodes=NODES,
        node_name=node,
    )


PowerLog = list[tuple[str, str, float, float]]
"""(node, VM name, power-on called, power-on returned), monotonic."""


def record_power_ons(
    node: str, env: EmbeddedHosts, log: PowerLog, slow: float = 0.0, fail: str = ""
) -> None:
    """Wrap each simulated host's ``power_on``: log it, delay it by ``slow``, fail VM ``fail``."""
    for esx in env.hosts.hosts.values():
        original: Callable[[VmRef], Any] = esx.power_on

        async def power_on(vm: VmRef, original: Callable[[VmRef], Any] = original) -> None:
            start = time.monotonic()
            if vm.name == fail:
                raise VSphereError(f"{vm.name}: injected power-on failure", operation="x")
            await anyio.sleep(slow)
            await original(vm)
            log.append((node, vm.name, start, time.monotonic()))

        esx.power_on = power_on  # type: ignore[method-assign]


@asynccontextmanager
async def two_nodes(
    tmp: Path, shared_state: str, **wrap: Mapping[str, Any]
) -> AsyncIterator[dict[str, LiveRecovery]]:
    nodes: dict[str, LiveRecovery] = {}
    async with AsyncExitStack() as stack:
        for node in NODES:
            catalog = MemoryCatalog()
            for vm in (v for vs in VMS.values() for v in vs):
                catalog.add_vm(vm, disk_sizes=(16 * MiB,), data_per_disk=1 * MiB)
            env = await stack.enter_async_context(
                embedded_hosts(
                    tmp / node,
                    catalog,
                    hosts=ALL_HOSTS,
                    settings=settings_for(node, tmp, shared_state),
                    boot_read_bytes=256 * 1024,
                )
            )
            record_power_ons(node, env, **wrap.get(node, {}))
            nodes[node] = await stack.enter_async_context(
                LiveRecovery(env.settings, env.backends, builder=env.builder)
            )
        yield nodes


async def run_both(nodes: Mapping[str, LiveRecovery], plan: Plan) -> dict[str, dict[str, Any]]:
    runs: dict[str, PlanRun] = {}
    for node, lr in nodes.items():
        runs[node] = await lr.run_plan(plan)
    with anyio.fail_after(120):
        return {node: await run.wait() for node, run in runs.items()}


def part_of(node: str) -> set[str]:
    return {vm for vm, host in ON.items() if host in HOSTS[node]}


async def check_boot_order_across_nodes(tmp: Path, shared_state: str) -> None:
    log: PowerLog = []
    plan = load(plan_text())
    # B's hosts power on slowly: without the barrier A's app VMs would start before B's db VMs
    wrap = {"A": {"log": log}, "B": {"log": log, "slow": 1.0}}
    async with two_nodes(tmp, shared_state, **wrap) as nodes:
        summaries = await run_both(nodes, plan)
    for node, summary in summaries.items():
        assert summary["state"] == "completed", summary
        assert {r["vm"] for r in summary["vms"]} == part_of(node)
        assert summary["node"]["node"] == node
        assert set(summary["node"]["vms"]) == part_of(node)
        assert summary["node"]["others"] == {"B" if node == "A" else "A": 3}
        assert summaries["A"]["run_id"] == summaries["B"]["run_id"]
    powered = {(node, vm) for node, vm, _, _ in log}
    assert powered == {(n, vm) for n in NODES for vm in part_of(n)}  # each VM once, on its node
    db_ready = max(end for _, vm, _, end in log if vm in VMS["db"])
    app_start = min(start for _, vm, start, _ in log if vm in VMS["app"])
    assert app_start >= db_ready, (app_start, db_ready, log)


async def test_two_nodes_run_their_parts_in_boot_order(tmp_path: Path) -> None:
    await check_boot_order_across_nodes(tmp_path, str(tmp_path / "shared"))


async def test_a_stop_group_failing_on_one_node_stops_the_other(tmp_path: Path) -> None:
    log: PowerLog = []
    plan = load(plan_text(db_policy="stop"))
    wrap = {"A": {"log": log, "fail": "db1"}, "B": {"log": log}}
    async with two_nodes(tmp_path, str(tmp_path / "shared"), **wrap) as nodes:
        summaries = await run_both(nodes, plan)
    a, b = summaries["A"], summaries["B"]
    assert a["state"] == "stopped" and b["state"] == "stopped", (a, b)
    assert "node A" in b["stopped"] and "db" in b["stopped"], b["stopped"]
    states_b = {r["vm"]: r["state"] for r in b["vms"]}
    assert states_b["db2"] == "completed"
    assert {states_b[vm] for vm in part_of("B") if vm in VMS["app"]} == {"skipped"}
    assert not [vm for _, vm, _, _ in log if vm in VMS["app"]]  # no app VM powered on anywhere


async def test_the_same_run_twice_on_a_node_is_refused(tmp_path: Path) -> None:
    plan = load(plan_text())
    async with two_nodes(tmp_path, str(tmp_path / "shared"), A={"log": []}, B={"log": []}) as n:
        summaries = await run_both(n, plan)
        assert summaries["A"]["state"] == "completed"
        with pytest.raises(PlanError, match=r"node 'A' already ran run .*--run-id"):
            await n["A"].run_plan(plan)
        assert len(n["A"].plans()) == 1


def test_nodes_without_shared_state_are_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="nodes is set but shared_state is empty"):
        settings_for("A", tmp_path, "")
    with pytest.raises(SettingsError, match="node_name 'C' is not one of nodes \\(A, B\\)"):
        settings_for("C", tmp_path, str(tmp_path / "s"))
