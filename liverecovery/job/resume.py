"""What to do with a job whose process stopped: the decision, from its journal and reality.

A VM running from our export is a production VM frozen in I/O: the job continues, serving it
again with the same file handles. A job that never powered its VM on is rolled back. A job whose
storage vMotion finished only has cleanup left. A job that was rolling back keeps rolling back.
A backup verification's copy (``disposable``) is not production: it is powered off and undone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from liverecovery.job.journal import JournalContents
from liverecovery.job.states import TERMINAL_STATES, State

__all__ = ["ResumePlan", "plan_resume"]


@attrs.frozen
class ResumePlan:
    """Where the resumed job goes, and the side effects its journal says are still in place."""

    last_state: State
    target: State
    effects: Mapping[str, Mapping[str, Any]]
    migrated: Mapping[str, Any] | None
    reason: str


def plan_resume(
    contents: JournalContents,
    *,
    vm_running: bool | None,
    found: Mapping[str, Mapping[str, Any]] | None = None,
    disposable: bool = False,
) -> ResumePlan:
    """Decide from the journal and, when known, whether the VM is powered on right now.

    ``vm_running`` is None when vSphere cannot be asked (the journal is then taken as true).
    ``found`` holds side effects vSphere shows that the journal lacks: the process died after
    a call took effect and before it was journaled (a mount, a registration, a power-on).
    """
    last = State(contents.last_state)
    effects = {str(r.data.get("effect")): dict(r.data) for r in contents.effects()}
    for effect, data in (found or {}).items():
        effects.setdefault(effect, dict(data))
    migrated = next(
        (dict(r.data) for r in reversed(contents.records) if r.kind == "migrated"), None
    )

    def plan(target: State, reason: str) -> ResumePlan:
        return ResumePlan(last, target, effects, migrated, reason)

    if last in TERMINAL_STATES:
        return plan(last, f"the job had already ended {last.value}")
    if last is State.ROLLING_BACK:
        return plan(State.ROLLING_BACK, "the job was rolling back")
    if migrated is not None:
        return plan(State.CLEANING_UP, "the storage vMotion had finished; cleanup is left")
    if "powered_on" in effects:
        if disposable:
            return plan(State.ROLLING_BACK, "a backup verification's copy: powering it off")
        if vm_running is False:
            return plan(State.ROLLING_BACK, "the VM is no longer powered on")
        if last is State.MIGRATING:
            return plan(State.MIGRATING, "the VM runs from the backup; migrating again")
        return plan(State.SERVING, "the VM runs from the backup; serving it again")
    return plan(
        State.ROLLING_BACK,
        f"the process stopped while the job was {last.value}, before its VM was powered on",
    )
