"""What a running plan reports: groups starting and getting ready, each VM's job changing state.

Like a job's ``EventLog``, every follower sees every event from the start, in order.
"""

from __future__ import annotations

import attrs

from liverecovery.job.events import FollowedLog
from liverecovery.job.states import State

__all__ = [
    "GroupReady",
    "GroupSkipped",
    "GroupStarted",
    "PlanEnded",
    "PlanEvent",
    "PlanEventLog",
    "PlanWarning",
    "VmChanged",
]


@attrs.frozen
class GroupStarted:
    """The group's VMs are being started; ``at``: seconds since the plan started."""

    group: str
    at: float


@attrs.frozen
class GroupReady:
    """Every VM of the group is powered on (or failed, under ``continue``), heartbeating when
    asked, and its delay has passed: the groups after it may start."""

    group: str
    at: float
    failed: tuple[str, ...] = ()


@attrs.frozen
class GroupSkipped:
    """The group was not started, and why (a ``stop`` group failed, or the plan was cancelled)."""

    group: str
    at: float
    reason: str


@attrs.frozen
class VmChanged:
    """A VM's job moved to ``state`` (``job_id`` on ``host``)."""

    vm: str
    group: str
    host: str
    job_id: str
    state: State
    at: float
    error: str = ""


@attrs.frozen
class PlanWarning:
    """Something the operator should know that does not stop the plan."""

    message: str
    at: float


@attrs.frozen
class PlanEnded:
    """Every group was started or skipped and every job has ended (or was left running)."""

    state: str
    at: float


PlanEvent = GroupStarted | GroupReady | GroupSkipped | VmChanged | PlanWarning | PlanEnded


class PlanEventLog(FollowedLog[PlanEvent]):
    """A plan's events; times rounded to the microsecond, as the plan journal keeps them."""

    def elapsed(self) -> float:
        """Seconds since the plan started."""
        return round(super().elapsed(), 6)
