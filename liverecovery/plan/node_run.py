"""One node's share of a plan run by several serving nodes (``Settings.nodes``).

The plan is checked whole on every node (``preflight``); then the nodes agree on its host
placement through the shared state, each keeps the VMs whose ESX host ranks it first
(``plan.nodes.node_part``), and boot groups wait for every node (``plan.barrier``).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from liverecovery.backends import SharedState
from liverecovery.catalog.objects import StoreOptions
from liverecovery.catalog.shared_state import open_shared_state
from liverecovery.config import Settings
from liverecovery.plan.barrier import SharedStateBarrier
from liverecovery.plan.model import Plan
from liverecovery.plan.nodes import NodePart, node_part
from liverecovery.plan.runner import PlannedVm

__all__ = ["node_barrier", "take_part"]


def node_barrier(
    plan: Plan, settings: Settings, *, run_id: str, state: SharedState | None = None
) -> SharedStateBarrier:
    """The barrier of this node (``settings.node_name``) in run ``run_id`` of ``plan`` (also
    for a run resumed after a restart: it waits for the other nodes through the same records).

    :raises SettingsError: ``shared_state`` cannot be opened.
    """
    owns = state is None
    if state is None:
        backups = str(settings.backup_root) if settings.backup_root else ""
        state = open_shared_state(
            settings.shared_state, StoreOptions.from_settings(settings), backups=backups
        )
    return SharedStateBarrier(
        state, plan, run_id, node=settings.node_name, nodes=settings.nodes, owns_state=owns
    )


async def take_part(
    plan: Plan,
    planned: Sequence[PlannedVm],
    settings: Settings,
    *,
    run_id: str,
    state: SharedState | None = None,
) -> tuple[list[PlannedVm], NodePart, SharedStateBarrier]:
    """This node's VMs of ``planned``, its part, and the barrier of the run (which closes the
    shared state it opened from ``settings.shared_state`` unless given ``state``).

    :raises PlanError: the placement recorded by another node does not fit this plan, or this
        node already ran this run.
    :raises SettingsError: ``shared_state`` cannot be opened.
    :raises BackendError: the shared state does not answer.
    """
    barrier = node_barrier(plan, settings, run_id=run_id, state=state)
    try:
        placement = await barrier.settle_placement({p.vm.vm: p.host for p in planned})
        part = node_part(placement, settings.node_name, settings.nodes)
        await barrier.begin()
    except BaseException:
        await barrier.aclose()
        raise
    mine = set(part.vms)
    return (
        [attrs.evolve(p, host=placement[p.vm.vm]) for p in planned if p.vm.vm in mine],
        part,
        barrier,
    )
