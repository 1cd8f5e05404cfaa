"""The plan's table and lines, and the table redrawn in place while a plan runs."""

from __future__ import annotations

import io

import pytest

from liverecovery import LiveRecovery
from liverecovery.job.states import State
from liverecovery.plan.events import GroupReady, GroupSkipped, PlanEnded, VmChanged
from liverecovery.plan.runner import VmRow
from liverecovery.plan.table import event_line, format_table
from liverecovery.recovery.plan_progress import show_plan
from tests.job.helpers import fast_settings
from tests.plan.test_runner import plan_of, plan_text, world

pytestmark = pytest.mark.anyio


def test_format_table_aligns_columns() -> None:
    rows = [
        VmRow("web01", "app", "esx01", "j1", "serving", 1.25, 3 << 20, 0),
        VmRow("db-long-name", "db", "esx02", "j2", "waiting", None, 0, 2 << 30),
    ]
    lines = format_table(rows)
    assert lines[0].split() == ["VM", "GROUP", "HOST", "STATE", "POWER-ON", "SERVED", "RESTORED"]
    assert lines[1].split() == [
        "web01",
        "app",
        "esx01",
        "serving",
        "1.2s",
        "3.0",
        "MiB",
        "0.0",
        "MiB",
    ]
    assert lines[2].split()[4:] == ["-", "0.0", "MiB", "2.00", "GiB"]
    assert len({line.index("GROUP") for line in lines[:1]}) == 1
    assert lines[1].index("app") == lines[0].index("GROUP") == lines[2].index("db ")


def test_event_lines() -> None:
    assert event_line(VmChanged("a", "g", "h", "j", State.SERVING, 1.5)) == (
        "   1.500s  vm a (g, h): serving"
    )
    assert event_line(GroupReady("g", 2.0, ("a", "b"))).endswith("group g: ready (2 failed: a, b)")
    assert event_line(GroupSkipped("g", 2.0, "why")).endswith("group g: skipped: why")
    assert event_line(PlanEnded("completed", 3.0)).endswith("plan completed")


async def test_show_plan_redraws_the_table_until_the_plan_ends() -> None:
    backends, faults = world(["a1", "b1"])
    faults.slow("vsphere.power_on", 0.3)
    out = io.StringIO()
    async with LiveRecovery(fast_settings(), backends) as lr:
        run = await lr.run_plan(plan_of(plan_text({"a": ["a1"], "b": ["b1"]})))
        summary = await show_plan(run, file=out, interval_s=0.05)
    assert summary["state"] == "completed"
    text = out.getvalue()
    assert "\x1b[3F\x1b[J" in text  # redrawn over its own three lines
    last = text.rsplit("\x1b[J", 1)[1].splitlines()
    assert [line.split()[3] for line in last[1:]] == ["completed", "completed"]
