"""The lifecycle of one recovery job, declared as data.

The happy path follows the seed's eight steps; any active state can ``fail`` or be ``cancel``-led
into ``rolling_back``, which ends ``failed`` when any error was recorded and ``cancelled``
otherwise. The machine (``machine.py``), the diagram (``diagram.py``, copied into the README)
and the tests are all generated from these tables, so they cannot disagree.
"""

from __future__ import annotations

import enum
from itertools import pairwise

import attrs

__all__ = [
    "ACTIVE_STATES",
    "COMPENSATION_ORDER",
    "HAPPY_PATH",
    "STEP_STATES",
    "STEP_TIMEOUTS",
    "State",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Transition",
]


class State(enum.StrEnum):
    """Where a job stands."""

    CREATED = "created"
    PREFLIGHT = "preflight"
    EXPORTING = "exporting"
    MOUNTING = "mounting"
    STAGING = "staging"
    REGISTERING = "registering"
    POWERING_ON = "powering_on"
    SERVING = "serving"
    MIGRATING = "migrating"
    CLEANING_UP = "cleaning_up"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __repr__(self) -> str:
        """The plain value, so a tuple of states prints as ``('created', 'preflight')``."""
        return repr(self.value)


HAPPY_PATH: tuple[State, ...] = (
    State.CREATED,
    State.PREFLIGHT,
    State.EXPORTING,
    State.MOUNTING,
    State.STAGING,
    State.REGISTERING,
    State.POWERING_ON,
    State.SERVING,
    State.MIGRATING,
    State.CLEANING_UP,
    State.COMPLETED,
)

TERMINAL_STATES: frozenset[State] = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})

ACTIVE_STATES: tuple[State, ...] = HAPPY_PATH[:-1]
"""States a job can fail or be cancelled from."""

STEP_STATES: tuple[State, ...] = HAPPY_PATH[1:-1]
"""States in which the job runs a step (I/O outside the machine)."""

STEP_TIMEOUTS: dict[State, str] = {
    State.PREFLIGHT: "preflight",
    State.EXPORTING: "export",
    State.MOUNTING: "mount",
    State.STAGING: "stage",
    State.REGISTERING: "register",
    State.POWERING_ON: "power_on",
    State.SERVING: "serve",
    State.MIGRATING: "migrate",
    State.CLEANING_UP: "cleanup",
}
"""The ``Timeouts`` field that bounds each step."""

COMPENSATION_ORDER: tuple[str, ...] = (
    "power_off",
    "unregister",
    "unpublish",
    "unmount",
    "unexport",
    "release_cache_reservation",
)
"""The order a full rollback undoes things in (reverse of the steps that did them)."""


@attrs.frozen
class Transition:
    """One row of the transition table."""

    trigger: str
    source: State
    dest: State
    conditions: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()


TRANSITIONS: tuple[Transition, ...] = (
    *(Transition("advance", a, b) for a, b in pairwise(HAPPY_PATH)),
    *(Transition("fail", s, State.ROLLING_BACK) for s in ACTIVE_STATES),
    *(Transition("cancel", s, State.ROLLING_BACK) for s in ACTIVE_STATES),
    Transition("rolled_back", State.ROLLING_BACK, State.FAILED, conditions=("has_errors",)),
    Transition("rolled_back", State.ROLLING_BACK, State.CANCELLED, unless=("has_errors",)),
)
