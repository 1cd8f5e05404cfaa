"""The part of a plan each serving node runs: a partition, by host, stable when a node leaves."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery import Settings
from liverecovery.cluster.placement import place
from liverecovery.errors import SettingsError
from liverecovery.plan.model import BootGroup, Plan, PlanVm
from liverecovery.plan.nodes import node_part, plan_run_id

names = st.text("abcdefghij0123456789-", min_size=1, max_size=8)


@st.composite
def plans(draw: st.DrawFn) -> tuple[dict[str, str], list[str]]:
    """A placement (VM -> host, plan order) and a node list."""
    hosts = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    vms = draw(st.lists(names, min_size=0, max_size=30, unique=True))
    placement = {vm: draw(st.sampled_from(hosts)) for vm in vms}
    nodes = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    return placement, nodes


@given(plans())
def test_the_parts_partition_the_plan_and_no_host_spans_two_nodes(
    case: tuple[dict[str, str], list[str]],
) -> None:
    placement, nodes = case
    parts = [node_part(placement, n, nodes) for n in nodes]
    every = [vm for p in parts for vm in p.vms]
    assert sorted(every) == sorted(placement)  # each VM on exactly one node
    owners: dict[str, str] = {}
    for p in parts:
        assert list(p.vms) == [vm for vm in placement if vm in set(p.vms)]  # plan order
        for vm in p.vms:
            assert owners.setdefault(placement[vm], p.node) == p.node
        assert sum(p.others.values()) + len(p.vms) == len(placement)
        assert set(p.hosts) == {placement[vm] for vm in p.vms}


@given(plans(), st.data())
def test_removing_a_node_moves_only_its_hosts(
    case: tuple[dict[str, str], list[str]], data: st.DataObject
) -> None:
    placement, nodes = case
    if len(nodes) < 2:
        return
    gone = data.draw(st.sampled_from(nodes))
    rest = [n for n in nodes if n != gone]
    before = {n: set(node_part(placement, n, nodes).vms) for n in nodes}
    after = {n: set(node_part(placement, n, rest).vms) for n in rest}
    for n in rest:
        assert before[n] <= after[n]  # nobody loses a VM
        assert after[n] - before[n] <= before[gone]  # what it gains was the gone node's


def test_a_node_not_in_the_list_is_refused() -> None:
    with pytest.raises(ValueError, match="node 'c' is not one of the nodes a, b"):
        node_part({"vm": "esx"}, "c", ["a", "b"])


def test_describe_names_the_counts_and_the_others() -> None:
    placement = {f"vm{i}": f"esx{i % 4}" for i in range(20)}
    mine = sum(1 for h in placement.values() if place(h, ["A", "B"]) == "A")
    part = node_part(placement, "A", ["A", "B"])
    assert part.describe() == f"node A of 2: {mine} of 20 VMs; the others on B"
    assert part.others == {"B": 20 - mine}


def _plan(source: str, vms: tuple[str, ...] = ("a", "b")) -> Plan:
    return Plan(
        "p",
        (BootGroup("g"),),
        tuple(PlanVm(v, "g", "ds", host="esx") for v in vms),
        source=source,
    )


def test_the_run_id_is_the_plans_content_not_its_path() -> None:
    assert plan_run_id(_plan("/x/plan.toml")) == plan_run_id(_plan("/y/other.toml"))
    assert plan_run_id(_plan("plan.toml")) != plan_run_id(_plan("plan.toml", ("a", "c")))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"nodes": ["a", "b"], "node_name": "c", "shared_state": "/s"},
            "node_name 'c' is not one of nodes \\(a, b\\)",
        ),
        (
            {"nodes": ["a", "a"], "node_name": "a", "shared_state": "/s"},
            "nodes: 'a' is given twice",
        ),
        ({"nodes": ["a", "b"], "node_name": "a"}, "nodes is set but shared_state is empty"),
        ({"nodes": ["a", "b"], "shared_state": "/s"}, "node_name must name this node"),
        ({"nodes": ["a/b"], "node_name": "a/b", "shared_state": "/s"}, "'a/b' is not a node name"),
        ({"nodes": "ab", "node_name": "a", "shared_state": "/s"}, "must be a list of node names"),
    ],
)
def test_bad_node_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_mapping(kwargs, source="s.toml")


def test_node_settings_from_toml() -> None:
    s = Settings.from_mapping({"nodes": ["a", "b"], "node_name": "b", "shared_state": "/s"})
    assert s.nodes == ("a", "b") and s.node_name == "b"
