"""The part of a plan one serving node runs, and the run id every node agrees on. Pure.

After the plan's own host placement (``plan/placement.py``), each VM's ESX host is placed on a
node by rendezvous hashing (``cluster.placement.place(esx_host, nodes)``): node N runs exactly
the VMs whose host ranks N first. Every node computes this alone from the same plan and node
list, so the parts partition the plan, one host mounts from one node only, and a node leaving
the list moves only its own hosts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

from liverecovery.cluster.placement import place
from liverecovery.errors import SettingsError
from liverecovery.plan.model import Plan

__all__ = ["NodePart", "check_run_id", "node_of_hosts", "node_part", "plan_run_id"]

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


@attrs.frozen
class NodePart:
    """What ``node`` runs of a plan: its VMs (plan order) and the hosts they go to; ``others``
    names each other node with the VM count it runs."""

    node: str
    nodes: tuple[str, ...]
    vms: tuple[str, ...]
    hosts: tuple[str, ...]
    total: int
    others: Mapping[str, int] = attrs.field(factory=dict, hash=False)

    def describe(self) -> str:
        """``node A of 2: 7 of 20 VMs; the others on B``."""
        others = ", ".join(sorted(self.others)) or "none"
        return (
            f"node {self.node} of {len(self.nodes)}: {len(self.vms)} of {self.total} VMs; "
            f"the others on {others}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "nodes": list(self.nodes),
            "vms": list(self.vms),
            "hosts": list(self.hosts),
            "total": self.total,
            "others": dict(self.others),
        }


def node_of_hosts(hosts: Iterable[str], nodes: Sequence[str]) -> dict[str, str]:
    """ESX host -> the node that serves it."""
    return {h: place(h, nodes) for h in hosts}


def node_part(placement: Mapping[str, str], node: str, nodes: Sequence[str]) -> NodePart:
    """The part of a plan ``node`` runs, from the plan's placement (VM -> host, plan order).

    :raises ValueError: ``node`` is not one of ``nodes``.
    """
    if node not in nodes:
        raise ValueError(f"node {node!r} is not one of the nodes {', '.join(nodes)}")
    owner = node_of_hosts(set(placement.values()), nodes)
    mine = tuple(vm for vm, host in placement.items() if owner[host] == node)
    hosts = tuple(sorted({placement[vm] for vm in mine}))
    others: dict[str, int] = {}
    for host in placement.values():
        if owner[host] != node:
            others[owner[host]] = others.get(owner[host], 0) + 1
    return NodePart(node, tuple(nodes), mine, hosts, len(placement), others)


def plan_run_id(plan: Plan) -> str:
    """The run id every node derives alone: 12 hex digits of SHA-256 over the plan's content
    (its JSON, keys sorted, without the file's path, which differs between nodes). The same
    plan gives the same id on every node with no coordination; a changed plan gets a new one,
    so its records never mix with the old run's."""
    data = {k: v for k, v in plan.to_json().items() if k != "source"}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run (part of job ids and shared-state keys).

    :raises SettingsError: it cannot.
    """
    if not _RUN_ID.fullmatch(run_id):
        raise SettingsError(
            f"run id {run_id!r}: use 1 to 32 letters, digits, '.', '_' or '-' (a letter or "
            "digit first)"
        )
    return run_id
