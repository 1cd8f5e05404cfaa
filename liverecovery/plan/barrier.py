"""Boot groups across serving nodes: the seam between a plan's runner and the other nodes.

A group starts on any node only once the groups it follows are ready on every node. Each node
records, once, when its part of a group is ready (``ready``) or will start nothing more
(``stopped``: a failure under ``on_failure = "stop"``, a cancel, a skipped group) at
``plans/<plan>/<run id>/<group>/<node>`` in the ``SharedState`` (create-once, so a record is
never overwritten), and waits for the other nodes' records by polling, bounded by the group's
wait timeout (``group_wait_timeout_s``). A node with no VM in a group records it ready as soon
as the groups before it are ready everywhere. A record that says stopped, or a node that does
not answer in time, stops this node's later groups too: no VM starts before what it depends on.

The first node to get through its preflight also records the plan's host placement
(``placement``, create-once) and every node runs from that record, so the parts partition the
plan even when ``least-loaded`` placement reads different host loads on different nodes.

``LocalBarrier`` is the one-node default (nothing to wait for); ``SharedStateBarrier`` the
several-node one. The runner stays a layer above jobs: the barrier only says when to go on.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio

from liverecovery.backends import SharedState
from liverecovery.config import Settings
from liverecovery.errors import LiveRecoveryError, PlanError
from liverecovery.plan.model import BootGroup, GroupWait, Plan

__all__ = [
    "GroupBarrier",
    "LocalBarrier",
    "SharedStateBarrier",
    "group_wait_timeout_s",
]

_log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def group_wait_timeout_s(settings: Settings, group: BootGroup) -> float:
    """How long a node waits for the others to report ``group`` ready: what one of its jobs may
    take from its start to its power-on (the job's timeouts up to power-on), plus the group's
    heartbeat wait and delay; past it the node counts the group as failed on the silent nodes."""
    t = settings.timeouts
    total = t.preflight + t.export + t.mount + t.stage + t.register + t.power_on + group.delay_s
    if group.wait is GroupWait.HEARTBEAT:
        total += group.heartbeat_timeout_s
    return total


class GroupBarrier(Protocol):
    """**Protocol:** what the runner asks of the other nodes running the same plan."""

    async def settle_placement(self, placement: Mapping[str, str]) -> dict[str, str]:
        """The placement (VM -> host) every node runs: the first one recorded."""
        ...

    async def begin(self) -> None:
        """Mark this node's run as started. :raises PlanError: it already ran this run."""
        ...

    async def arrive(self, group: str, stopped: str = "") -> None:
        """This node's part of ``group`` is ready (``stopped``: or starts nothing more, why)."""
        ...

    async def wait(self, group: str, timeout_s: float) -> str:
        """Wait until every node reported ``group``; "" when all are ready, else why to stop."""
        ...

    async def aclose(self) -> None: ...


class LocalBarrier:
    """One node alone: nothing to agree on, nobody to wait for."""

    async def settle_placement(self, placement: Mapping[str, str]) -> dict[str, str]:
        return dict(placement)

    async def begin(self) -> None:
        return None

    async def arrive(self, group: str, stopped: str = "") -> None:
        return None

    async def wait(self, group: str, timeout_s: float) -> str:
        return ""

    async def aclose(self) -> None:
        return None


def _part(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "x"


class SharedStateBarrier:
    """The barrier of ``node`` among ``nodes`` through a ``SharedState`` (see the module)."""

    def __init__(
        self,
        state: SharedState,
        plan: Plan,
        run_id: str,
        *,
        node: str,
        nodes: Sequence[str],
        poll_s: float = 0.2,
        owns_state: bool = True,
    ) -> None:
        self.state = state
        self.plan = plan
        self.run_id = run_id
        self.node = node
        self.nodes = tuple(nodes)
        self.poll_s = poll_s
        self._owns = owns_state
        self.prefix = f"plans/{_part(plan.name)}/{_part(run_id)}"
        self._groups = {g.name: f"{i}-{_part(g.name)}" for i, g in enumerate(plan.groups)}
        self._seen: dict[str, dict[str, str]] = {}

    def key(self, group: str, node: str) -> str:
        """``plans/<plan>/<run id>/<index>-<group>/<node>``."""
        return f"{self.prefix}/{self._groups[group]}/{node}"

    async def settle_placement(self, placement: Mapping[str, str]) -> dict[str, str]:
        key = f"{self.prefix}/placement"
        mine = {"nodes": list(self.nodes), "placement": dict(placement)}
        if await self.state.create(key, json.dumps(mine, sort_keys=True).encode()) is not None:
            return dict(placement)
        found = await self.state.get(key)
        try:
            recorded = json.loads(found.data) if found is not None else None
            if not isinstance(recorded, dict):
                raise ValueError("not a placement record")
            nodes, recorded = recorded.get("nodes"), recorded.get("placement")
            if not isinstance(recorded, dict) or set(recorded) != set(placement):
                raise ValueError("its VMs are not this plan's")
        except ValueError as exc:
            raise PlanError(
                f"{self.plan.source}: the placement recorded at {key} in the shared state "
                f"cannot be used: {exc}"
            ) from None
        if nodes != list(self.nodes):
            # two node lists would split the plan two ways: a VM recovered twice, or never
            raise PlanError(
                f"{self.plan.source}: nodes differ between the nodes running run {self.run_id} "
                f"of plan {self.plan.name!r}: this node has {', '.join(self.nodes)}, another "
                f"recorded {', '.join(map(str, nodes or ()))} at {key}; give every node the "
                "same nodes"
            )
        return {vm: str(recorded[vm]) for vm in placement}

    async def begin(self) -> None:
        key = f"{self.prefix}/started/{self.node}"
        if await self.state.create(key, b"started\n") is None:
            raise PlanError(
                f"{self.plan.source}: node {self.node!r} already ran run {self.run_id} of plan "
                f"{self.plan.name!r} (shared state {key}): give a new run id (--run-id) to run "
                "it again"
            )

    async def arrive(self, group: str, stopped: str = "") -> None:
        record = {"node": self.node, "state": "stopped" if stopped else "ready"}
        if stopped:
            record["reason"] = stopped
        key = self.key(group, self.node)
        try:
            await self.state.create(key, json.dumps(record).encode())
        except LiveRecoveryError as exc:  # the others time out waiting and stop: safe
            _log.warning("cannot record %s in the shared state: %s", key, exc)

    async def _outcomes(self, group: str) -> dict[str, str]:
        """node -> "" (ready) or its stop reason, for the nodes that reported ``group``."""
        seen = self._seen.setdefault(group, {})
        folder = f"{self.prefix}/{self._groups[group]}"
        for key in await self.state.keys(folder):
            node = key.rsplit("/", 1)[-1]
            if node in seen or node not in self.nodes:
                continue
            found = await self.state.get(key)
            if found is None:
                continue
            try:
                record = json.loads(found.data)
                stopped = record.get("state") == "stopped"
                seen[node] = str(record.get("reason") or "stopped") if stopped else ""
            except (ValueError, AttributeError):
                seen[node] = f"its record {key} is unreadable"
        return seen

    async def wait(self, group: str, timeout_s: float) -> str:
        problem = ""
        with anyio.move_on_after(timeout_s if math.isfinite(timeout_s) else None):
            while True:
                try:
                    seen = await self._outcomes(group)
                except LiveRecoveryError as exc:  # a store outage: ask again until the timeout
                    problem = f" (the shared state: {exc})"
                    await anyio.sleep(self.poll_s)
                    continue
                for node in self.nodes:
                    if seen.get(node):
                        return f"node {node}: {seen[node]}"
                if all(n in seen for n in self.nodes):
                    return ""
                await anyio.sleep(self.poll_s)
        missing = [n for n in self.nodes if n not in self._seen.get(group, {})]
        return (
            f"node(s) {', '.join(missing)} did not report group {group!r} ready within "
            f"{timeout_s:g} s{problem}"
        )

    async def aclose(self) -> None:
        if self._owns:
            await self.state.aclose()
