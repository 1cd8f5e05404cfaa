"""A plan verification's report: one JSON document (``schema`` names its version) and one
Markdown page, written into the plan's results folder next to each VM's own report folder.

Schema 1 (``plan-report.json``): ``schema``, ``kind`` (``"plan-verification"``), ``plan``,
``run_id``, ``started``, ``finished``, ``duration_s``, ``passed``, ``cancelled``, ``stopped``
(why later groups were not run; empty: none were stopped), ``totals`` (``vms``, ``passed``,
``failed``, ``not_run``, ``all_booted``, ``slowest_time_to_heartbeat_s`` — the plan's measured
recovery time, null unless every VM booted —, ``last_heartbeat_s``: seconds from the plan's
start to the last guest's heartbeat), ``groups`` (each: ``name``, ``ran``, ``reason``) and
``vms`` (each: ``vm``, ``group``, ``host``, ``job_id``, ``outcome`` ``passed|failed|not_run``,
``time_to_heartbeat_s``, ``heartbeat_at_s`` (from the plan's start), ``reason``, and
``report``: the single-VM report's JSON, schema 1 of ``verify.report``, or null when the VM
was not run). Fields are only ever added; a change of meaning gets a new version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiofiles
import attrs

from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.io.threads import run_sync
from liverecovery.verify.report import VerificationReport

__all__ = [
    "PLAN_REPORT_JSON",
    "PLAN_REPORT_MD",
    "PLAN_SCHEMA_VERSION",
    "GroupRecord",
    "PlanVerificationReport",
    "VmRecord",
]

PLAN_SCHEMA_VERSION = 1
PLAN_REPORT_JSON = "plan-report.json"
PLAN_REPORT_MD = "plan-report.md"


@attrs.frozen
class VmRecord:
    """One VM of the plan: its single-VM report (None: not run) and where it stood."""

    vm: str
    group: str
    host: str
    job_id: str
    report: VerificationReport | None
    ran: bool = True
    """False: its group was not started (a stop policy, a cancel)."""
    heartbeat_at_s: float | None = None
    """Seconds from the plan's start to the guest's heartbeat (None: none): when the plan saw
    the copy powered on, plus its time to heartbeat (so at most the power-on call's own
    duration late)."""
    reason: str = ""
    """Why it was not run, or why it failed without a report."""

    @property
    def outcome(self) -> str:
        if not self.ran:
            return "not_run"
        if self.report is None:
            return "failed"
        return "passed" if self.report.passed else "failed"

    @property
    def time_to_heartbeat_s(self) -> float | None:
        return self.report.time_to_heartbeat_s if self.report is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "group": self.group,
            "host": self.host,
            "job_id": self.job_id,
            "outcome": self.outcome,
            "time_to_heartbeat_s": self.time_to_heartbeat_s,
            "heartbeat_at_s": self.heartbeat_at_s,
            "reason": self.reason,
            "report": self.report.to_json() if self.report is not None else None,
        }


@attrs.frozen
class GroupRecord:
    """A boot group: whether it ran, and if not, why."""

    name: str
    ran: bool
    reason: str = ""


@attrs.frozen
class PlanVerificationReport:
    """The outcome of verifying every VM of a plan in its boot groups."""

    plan: str
    run_id: str
    started: str
    finished: str
    duration_s: float
    groups: tuple[GroupRecord, ...]
    vms: tuple[VmRecord, ...]
    cancelled: bool = False
    stopped: str = ""
    report_dir: Path | None = attrs.field(default=None, eq=False)

    @property
    def all_booted(self) -> bool:
        """Every VM's guest reported a heartbeat."""
        return bool(self.vms) and all(v.time_to_heartbeat_s is not None for v in self.vms)

    @property
    def slowest_time_to_heartbeat_s(self) -> float | None:
        """The plan's measured recovery time: the slowest VM's power-on to heartbeat (None:
        not every VM booted)."""
        if not self.all_booted:
            return None
        return max(v.time_to_heartbeat_s or 0.0 for v in self.vms)

    @property
    def last_heartbeat_s(self) -> float | None:
        """Seconds from the plan's start to the last heartbeat (None: not every VM booted)."""
        if not self.all_booted:
            return None
        return max(v.heartbeat_at_s or 0.0 for v in self.vms)

    @property
    def passed(self) -> bool:
        """Every VM ran and passed (every required check of every VM), and the plan was not
        cancelled."""
        return (
            bool(self.vms) and not self.cancelled and all(v.outcome == "passed" for v in self.vms)
        )

    def count(self, outcome: str) -> int:
        return sum(1 for v in self.vms if v.outcome == outcome)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA_VERSION,
            "kind": "plan-verification",
            "plan": self.plan,
            "run_id": self.run_id,
            "started": self.started,
            "finished": self.finished,
            "duration_s": self.duration_s,
            "passed": self.passed,
            "cancelled": self.cancelled,
            "stopped": self.stopped,
            "totals": {
                "vms": len(self.vms),
                "passed": self.count("passed"),
                "failed": self.count("failed"),
                "not_run": self.count("not_run"),
                "all_booted": self.all_booted,
                "slowest_time_to_heartbeat_s": self.slowest_time_to_heartbeat_s,
                "last_heartbeat_s": self.last_heartbeat_s,
            },
            "groups": [attrs.asdict(g) for g in self.groups],
            "vms": [v.to_json() for v in self.vms],
        }

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        rtt = self.slowest_time_to_heartbeat_s
        lines = [
            f"# Verification of plan {self.plan}: {verdict}",
            "",
            f"- Run `{self.run_id}`: started {self.started}, finished {self.finished} "
            f"({self.duration_s:.1f} s)",
            f"- VMs: {len(self.vms)}; passed {self.count('passed')}, failed "
            f"{self.count('failed')}, not run {self.count('not_run')}",
            "- Measured recovery time (slowest time to heartbeat): "
            + (f"{rtt:.1f} s" if rtt is not None else "not every VM booted")
            + (
                f"; last heartbeat {self.last_heartbeat_s:.1f} s after the plan started"
                if self.last_heartbeat_s is not None
                else ""
            ),
        ]
        if self.cancelled:
            lines.append("- The verification was cancelled")
        if self.stopped:
            lines.append(f"- Stopped: {self.stopped}")
        lines += [
            "",
            "| vm | group | host | outcome | time to heartbeat | report / reason |",
            "|---|---|---|---|---|---|",
        ]
        for v in self.vms:
            tth = f"{v.time_to_heartbeat_s:.1f} s" if v.time_to_heartbeat_s is not None else "-"
            if v.report is not None:
                why = f"[{v.job_id}]({v.job_id}/report.md)"
                if not v.report.passed:
                    why += ": " + "; ".join(v.report.failures)
            else:
                why = v.reason
            why = why.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {v.vm} | {v.group} | {v.host} | {v.outcome} | {tth} | {why} |")
        lines += ["", "## Boot groups", ""]
        for g in self.groups:
            lines.append(f"- {g.name}: " + ("ran" if g.ran else f"not run ({g.reason})"))
        clean = all(v.report is None or v.report.cleanup_clean for v in self.vms)
        lines += [
            "",
            "## Cleanup",
            "",
            "Every copy powered off, unregistered, unmounted, unexported, overlay discarded."
            if clean
            else "NOT clean: see the VMs' reports",
        ]
        return "\n".join(lines) + "\n"

    async def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``plan-report.json`` and ``plan-report.md`` into ``directory``."""
        await run_sync(make_private_dirs, directory)
        paths = (directory / PLAN_REPORT_JSON, directory / PLAN_REPORT_MD)
        texts = (json.dumps(self.to_json(), indent=2) + "\n", self.to_markdown())
        for path, text in zip(paths, texts, strict=True):
            async with aiofiles.open(path, "w", encoding="utf-8") as f:
                await f.write(text)
        return paths
