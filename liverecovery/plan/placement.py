"""Which ESX host each VM of a plan goes to: explicit, round-robin, or least-loaded. Pure."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from liverecovery.plan.model import Placement, Plan

__all__ = ["HostLoad", "VmNeeds", "place"]


@attrs.frozen
class HostLoad:
    """A host's free capacity as vSphere reports it (None: not reported)."""

    memory_free_bytes: int | None = None
    cpu_free_mhz: int | None = None


@attrs.frozen
class VmNeeds:
    """What a VM takes from its host: its configured memory and vCPUs (from the backup)."""

    memory_bytes: int = 0
    cpus: int = 0


def place(
    plan: Plan,
    *,
    loads: Mapping[str, HostLoad] | None = None,
    needs: Mapping[str, VmNeeds] | None = None,
) -> dict[str, str]:
    """VM name -> host. A VM that names its host keeps it. The others: ``round-robin`` in plan
    order over ``plan.hosts``; ``least-loaded`` one by one (largest memory first) onto the host
    with the most free memory left after the VMs already placed there, then the most free CPU,
    then the fewest VMs; a host that reports no free memory counts as having none beyond what
    its VM count says (so without facts, least-loaded spreads VMs evenly)."""
    loads = loads or {}
    needs = needs or {}
    placed: dict[str, str] = {vm.vm: vm.host for vm in plan.vms if vm.host is not None}
    rest = [vm for vm in plan.vms if vm.host is None]
    if not rest:
        return placed
    if not plan.hosts:
        raise ValueError("VMs without a host need the plan's hosts")
    if plan.placement is not Placement.LEAST_LOADED:
        for i, vm in enumerate(rest):
            placed[vm.vm] = plan.hosts[i % len(plan.hosts)]
        return placed
    memory = {h: (loads.get(h) or HostLoad()).memory_free_bytes for h in plan.hosts}
    cpu = {h: (loads.get(h) or HostLoad()).cpu_free_mhz for h in plan.hosts}
    count = dict.fromkeys(plan.hosts, 0)
    for placed_on in placed.values():
        if placed_on in count:
            count[placed_on] += 1
    known = all(m is not None for m in memory.values())
    free_mem = {h: float(m or 0) for h, m in memory.items()}
    free_cpu = {h: float(c or 0) for h, c in cpu.items()}
    for vm_name, host in placed.items():
        if host in free_mem:
            free_mem[host] -= (needs.get(vm_name) or VmNeeds()).memory_bytes
    order = sorted(rest, key=lambda v: -(needs.get(v.vm) or VmNeeds()).memory_bytes)
    for vm in order:
        need = needs.get(vm.vm) or VmNeeds()

        def score(h: str) -> tuple[float, float, int, int]:
            mem = free_mem[h] if known else 0.0
            return (-mem, -free_cpu[h], count[h], plan.hosts.index(h))

        host = min(plan.hosts, key=score)
        placed[vm.vm] = host
        free_mem[host] -= need.memory_bytes
        free_cpu[host] -= need.cpus * 1000.0  # a vCPU counted as 1 GHz of the host's free CPU
        count[host] += 1
    return placed
