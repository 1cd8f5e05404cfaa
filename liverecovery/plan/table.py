"""The plan's view as text: a table of its VMs, and one line per event. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from liverecovery.plan.events import (
    GroupReady,
    GroupSkipped,
    GroupStarted,
    PlanEnded,
    PlanEvent,
    PlanWarning,
    VmChanged,
)
from liverecovery.plan.runner import VmRow

__all__ = ["HEADER", "event_line", "format_table"]

HEADER = ("VM", "GROUP", "HOST", "STATE", "POWER-ON", "SERVED", "RESTORED")


def _size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def format_table(rows: Sequence[VmRow]) -> list[str]:
    """Aligned lines: a header, then one line per VM (time to power-on in seconds)."""
    cells = [HEADER] + [
        (
            r.vm,
            r.group,
            r.host,
            r.state,
            "-" if r.power_on_s is None else f"{r.power_on_s:.1f}s",
            _size(r.bytes_served),
            _size(r.bytes_restored),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def event_line(event: PlanEvent) -> str:
    """One line for a log: ``<seconds>s  <what happened>``."""
    at = f"{event.at:8.3f}s"
    if isinstance(event, VmChanged):
        line = f"{at}  vm {event.vm} ({event.group}, {event.host}): {event.state.value}"
        return line + (f": {event.error}" if event.error else "")
    if isinstance(event, GroupStarted):
        return f"{at}  group {event.group}: started"
    if isinstance(event, GroupReady):
        failed = f" ({len(event.failed)} failed: {', '.join(event.failed)})" if event.failed else ""
        return f"{at}  group {event.group}: ready{failed}"
    if isinstance(event, GroupSkipped):
        return f"{at}  group {event.group}: skipped: {event.reason}"
    if isinstance(event, PlanWarning):
        return f"{at}  warning: {event.message}"
    assert isinstance(event, PlanEnded)
    return f"{at}  plan {event.state}"
