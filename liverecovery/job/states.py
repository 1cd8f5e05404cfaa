"""The lifecycle of one recovery job, declared as data.

The happy path follows the seed's eight steps; any active state before power-on can ``fail`` or be
``cancel``-led into ``rolling_back``, which ends ``failed`` when any error was recorded and
``cancelled`` otherwise. Once the VM is powered on from the backup it is production
(``RUNNING_STATES``): no failure and no cancel leads to a rollback there. A failed storage
vMotion goes back to ``serving`` (``migration_failed``); only an operator's explicit ``stop``
(power off and clean up) leads to ``rolling_back`` (back to ``serving`` with
``power_off_failed`` when the VM could not be powered off), and ``vm_lost`` when the VM was
powered off outside the job (found on resume). The machine (``machine.py``), the diagram (``diagram.py``, copied into the README)
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
    "ROLLBACK_STATES",
    "RUNNING_STATES",
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

RUNNING_STATES: tuple[State, ...] = (State.SERVING, State.MIGRATING)
"""The VM runs from the backup: it is production, and nothing but an operator's ``stop`` takes it
down (no ``fail``, no ``cancel`` from here)."""

ROLLBACK_STATES: tuple[State, ...] = tuple(s for s in ACTIVE_STATES if s not in RUNNING_STATES)
"""States a failure or a cancel rolls back from: before power-on, and cleanup (the VM has
migrated, and a migrated VM's undos are dropped)."""

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
    *(Transition("fail", s, State.ROLLING_BACK) for s in ROLLBACK_STATES),
    *(Transition("cancel", s, State.ROLLING_BACK) for s in ROLLBACK_STATES),
    Transition("migration_failed", State.MIGRATING, State.SERVING),
    *(Transition("stop", s, State.ROLLING_BACK) for s in RUNNING_STATES),
    *(Transition("vm_lost", s, State.ROLLING_BACK) for s in RUNNING_STATES),
    Transition("power_off_failed", State.ROLLING_BACK, State.SERVING),
    Transition("rolled_back", State.ROLLING_BACK, State.FAILED, conditions=("has_errors",)),
    Transition("rolled_back", State.ROLLING_BACK, State.CANCELLED, unless=("has_errors",)),
)
