"""The hosts' NFS limits and placement, pure: properties over plan shapes."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from liverecovery.backends import HostFacts
from liverecovery.job.sharing import datastore_name_for
from liverecovery.plan.limits import ServerLimits, limit_problems
from liverecovery.plan.model import BootGroup, Placement, Plan, PlanVm
from liverecovery.plan.placement import HostLoad, VmNeeds, place

HOSTS = ("esx01", "esx02", "esx03")


def plan_of(
    n: int,
    placement: Placement,
    hosts: tuple[str, ...] = HOSTS,
    fixed: dict[int, str] | None = None,
) -> Plan:
    fixed = fixed or {}
    vms = tuple(PlanVm(vm=f"vm{i}", group="g", datastore="ds", host=fixed.get(i)) for i in range(n))
    return Plan("p", (BootGroup("g"),), vms, hosts=hosts, placement=placement)


@given(
    n=st.integers(1, 40),
    mounted=st.lists(st.integers(0, 40), min_size=3, max_size=3),
    limits=st.lists(st.integers(1, 40), min_size=3, max_size=3),
    ours=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_a_host_is_refused_exactly_when_one_more_mount_does_not_fit(
    n: int, mounted: list[int], limits: list[int], ours: list[bool]
) -> None:
    placement = place(plan_of(n, Placement.ROUND_ROBIN))
    facts = {}
    for h, m, lim, has in zip(HOSTS, mounted, limits, ours, strict=True):
        names = [f"other-{i}" for i in range(m)]
        if has and names:
            names[0] = datastore_name_for(h)  # our datastore is already mounted there
        facts[h] = HostFacts(h, nfs_datastores=tuple(names), nfs_max_volumes=lim)
    problems = limit_problems(placement, facts, server=ServerLimits(10_000, 10_000))
    used = Counter(placement.values())
    for h, m, lim, has in zip(HOSTS, mounted, limits, ours, strict=True):
        already = has and m > 0
        refused = [p for p in problems if p.startswith(f"host {h!r} already mounts")]
        should = used[h] > 0 and not already and m + 1 > lim
        assert bool(refused) == should, (h, problems)
        if refused:
            assert f"already mounts {m} NFS datastores" in refused[0]
            assert f"NFS.MaxVolumes is {lim}" in refused[0]
            assert f"plan's {used[h]} VM(s)" in refused[0]
    # however many VMs go to a host, they need one mount: the count of VMs never matters
    if not problems:
        many = {f"x{i}": h for i, h in enumerate(sorted(used) * 50)}
        assert limit_problems(many, facts, server=ServerLimits(10_000, 10_000)) == []


def test_server_connection_limits_name_the_address_and_counts() -> None:
    facts = {h: HostFacts(h) for h in HOSTS}
    placement = {"a": "esx01", "b": "esx02", "c": "esx03"}
    problems = limit_problems(
        placement,
        facts,
        client_addresses=dict.fromkeys(HOSTS, "127.0.0.1"),
        server=ServerLimits(max_connections=2, max_per_address=1),
    )
    assert problems == [
        "the plan's 3 host(s) would open 3 connections to our NFS server, which keeps at most 2 "
        "(nfs_max_connections)",
        "address '127.0.0.1' would open 3 connections to our NFS server, which allows 1 per "
        "address (nfs_max_connections_per_address)",
    ]


def test_sunrpc_max_conn_per_ip() -> None:
    ours = tuple(f"liverecovery-old{i}" for i in range(3))
    facts = {
        "esx01": HostFacts("esx01", nfs_datastores=ours, nfs_max_volumes=256, max_conn_per_ip=3)
    }
    problems = limit_problems({"a": "esx01"}, facts)
    assert problems == [
        "host 'esx01' would open 4 TCP connections to our NFS server's address and its "
        "SunRPC.MaxConnPerIP is 3"
    ]


@given(n=st.integers(1, 30), fixed=st.dictionaries(st.integers(0, 29), st.sampled_from(HOSTS)))
def test_round_robin_keeps_named_hosts_and_spreads_the_rest(n: int, fixed: dict[int, str]) -> None:
    fixed = {i: h for i, h in fixed.items() if i < n}
    placement = place(plan_of(n, Placement.ROUND_ROBIN, fixed=fixed))
    assert set(placement) == {f"vm{i}" for i in range(n)}
    for i, h in fixed.items():
        assert placement[f"vm{i}"] == h
    free = Counter(h for v, h in placement.items() if int(v[2:]) not in fixed)
    assert max(free.values(), default=0) - min((free[h] for h in HOSTS), default=0) <= 1


@given(
    memory=st.lists(st.integers(0, 64), min_size=3, max_size=3),
    needs=st.lists(st.integers(1, 8), min_size=1, max_size=12),
)
def test_least_loaded_puts_each_vm_where_most_memory_is_left(
    memory: list[int], needs: list[int]
) -> None:
    gib = 1 << 30
    plan = plan_of(len(needs), Placement.LEAST_LOADED)
    loads = {h: HostLoad(m * gib, 10_000) for h, m in zip(HOSTS, memory, strict=True)}
    vm_needs = {f"vm{i}": VmNeeds(need * gib, 1) for i, need in enumerate(needs)}
    placement = place(plan, loads=loads, needs=vm_needs)
    # replay: largest first, each onto the host with the most memory left at that moment
    left = {h: m * gib for h, m in zip(HOSTS, memory, strict=True)}
    for vm in sorted(vm_needs, key=lambda v: -vm_needs[v].memory_bytes):
        host = placement[vm]
        assert left[host] == max(left.values())
        left[host] -= vm_needs[vm].memory_bytes


def test_least_loaded_without_facts_spreads_evenly() -> None:
    placement = place(plan_of(7, Placement.LEAST_LOADED))
    assert sorted(Counter(placement.values()).values()) == [2, 2, 3]
