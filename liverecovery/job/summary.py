"""What a job reports about itself: live statistics, and how it ended."""

from __future__ import annotations

from typing import Any

import attrs

from liverecovery.backends import VmRef
from liverecovery.job.states import State

__all__ = ["JobStats", "JobSummary"]


@attrs.frozen
class JobStats:
    """The job's statistics at one moment; they feed its progress events.

    ``bytes_to_restore`` is what background restore must bring in (the allocated bytes of the
    served disks; the VM's total disk size when no disk is served through the cache).
    """

    bytes_served: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    bytes_fetched: int = 0
    bytes_restored: int = 0
    bytes_to_restore: int = 0
    bytes_migrated: int = 0
    overlay_bytes: int = 0


@attrs.frozen
class JobSummary:
    """How a job ended: its final state, the states it went through and how long each took."""

    job_id: str
    vm: str
    state: State
    states_visited: tuple[State, ...]
    timings: dict[str, float]
    compensations: tuple[str, ...]
    errors: tuple[str, ...]
    vm_ref: VmRef | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "job_id": self.job_id,
            "vm": self.vm,
            "state": self.state.value,
            "states_visited": [s.value for s in self.states_visited],
            "timings": self.timings,
            "compensations": list(self.compensations),
            "errors": list(self.errors),
            "vm_moref": self.vm_ref.moref if self.vm_ref else None,
        }
