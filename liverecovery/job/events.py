"""What a job reports while it runs: state changes, progress, warnings, compensations.

Every subscriber of ``EventLog`` sees every event from the job's start, in order, so a notebook
that starts iterating late still sees the whole story.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import anyio
import attrs

from liverecovery.job.states import State

__all__ = [
    "CompensationRan",
    "Event",
    "EventLog",
    "FollowedLog",
    "JobWarning",
    "Progress",
    "StateChanged",
]


@attrs.frozen
class StateChanged:
    """The job moved from ``previous`` to ``state``; ``at`` is seconds since the job started."""

    job_id: str
    previous: State
    state: State
    at: float


@attrs.frozen
class Progress:
    """How far the job is: bytes the ESX host read through NFS, bytes restored (background
    restore into the cache) out of ``bytes_total``, and bytes the storage vMotion has moved out
    of ``disk_bytes`` (the VM's total disk size)."""

    job_id: str
    state: State
    bytes_served: int
    bytes_restored: int
    bytes_total: int
    bytes_migrated: int = 0
    disk_bytes: int = 0


@attrs.frozen
class JobWarning:
    """Something the operator should know that does not stop the job."""

    job_id: str
    message: str


@attrs.frozen
class CompensationRan:
    """A rollback or cleanup step ran; ``error`` is its failure message, or empty."""

    job_id: str
    name: str
    error: str = ""


Event = StateChanged | Progress | JobWarning | CompensationRan

E = TypeVar("E")


class FollowedLog(Generic[E]):
    """An append-only list of events that any number of tasks can follow (a job's, a plan's)."""

    def __init__(self) -> None:
        self._events: list[E] = []
        self._changed = anyio.Event()
        self._closed = False
        self._started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the log was created."""
        return time.monotonic() - self._started

    def append(self, event: E) -> None:
        """Record ``event`` and wake every follower (ignored once closed)."""
        if self._closed:
            return
        self._events.append(event)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def close(self) -> None:
        """No more events: followers finish after the last one."""
        self._closed = True
        self._changed.set()

    @property
    def events(self) -> tuple[E, ...]:
        """Everything recorded so far."""
        return tuple(self._events)

    async def follow(self) -> AsyncIterator[E]:
        """Yield every event from the first, then new ones as they come, until closed."""
        index = 0
        while True:
            changed = self._changed
            while index < len(self._events):
                yield self._events[index]
                index += 1
            if self._closed:
                return
            await changed.wait()


class EventLog(FollowedLog[Event]):
    """A job's events."""
