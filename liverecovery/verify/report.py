"""A verification's report: JSON with a stable schema (``schema`` names its version) and a
Markdown page for people, written side by side into the report folder.

Schema 1 (``report.json``): ``schema``, ``job_id``, ``vm``, ``verification_vm``,
``restore_point`` (``id``, ``created``), ``esx_host``, ``isolation``, ``started``, ``finished``,
``duration_s``, ``time_to_heartbeat_s`` (null: none), ``passed``, ``cancelled``, ``error``,
``cleanup`` (``clean`` and ``errors``), ``checks`` (each: ``name``, ``required``, ``outcome``
``passed|failed|timed_out|skipped``, ``started``, ``duration_s``, ``detail``, ``artifact``).
Fields are only ever added; a change of meaning gets a new version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiofiles
import attrs

from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.io.threads import run_sync
from liverecovery.verify.checks import CheckResult

__all__ = ["REPORT_JSON", "REPORT_MD", "SCHEMA_VERSION", "VerificationReport"]

SCHEMA_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


@attrs.frozen
class VerificationReport:
    """The outcome of one VM's verification."""

    job_id: str
    vm: str
    verification_vm: str
    point_id: str
    point_created: str
    esx_host: str
    isolation: str
    started: str
    finished: str
    duration_s: float
    checks: tuple[CheckResult, ...]
    time_to_heartbeat_s: float | None = None
    cancelled: bool = False
    error: str = ""
    """Why the verification could not run its guest checks (the VM did not power on...)."""
    cleanup_errors: tuple[str, ...] = ()
    report_dir: Path | None = attrs.field(default=None, eq=False)

    @property
    def cleanup_clean(self) -> bool:
        return not self.cleanup_errors

    @property
    def passed(self) -> bool:
        """Every required check passed, nothing failed the run, and everything was undone."""
        return (
            not self.cancelled
            and not self.error
            and self.cleanup_clean
            and all(c.ok for c in self.checks)
        )

    @property
    def failures(self) -> list[str]:
        """One line per reason the verification did not pass."""
        lines = [f"{c.name}: {c.outcome.value}: {c.detail}" for c in self.checks if not c.ok]
        if self.error:
            lines.insert(0, self.error)
        if self.cancelled:
            lines.insert(0, "the verification was cancelled")
        lines += [f"cleanup: {e}" for e in self.cleanup_errors]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "job_id": self.job_id,
            "vm": self.vm,
            "verification_vm": self.verification_vm,
            "restore_point": {"id": self.point_id, "created": self.point_created},
            "esx_host": self.esx_host,
            "isolation": self.isolation,
            "started": self.started,
            "finished": self.finished,
            "duration_s": self.duration_s,
            "time_to_heartbeat_s": self.time_to_heartbeat_s,
            "passed": self.passed,
            "cancelled": self.cancelled,
            "error": self.error,
            "cleanup": {"clean": self.cleanup_clean, "errors": list(self.cleanup_errors)},
            "checks": [c.to_json() for c in self.checks],
        }

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        rtt = (
            f"{self.time_to_heartbeat_s:.1f} s"
            if self.time_to_heartbeat_s is not None
            else "no heartbeat"
        )
        lines = [
            f"# Backup verification of {self.vm}: {verdict}",
            "",
            f"- Restore point: `{self.point_id}`"
            + (f" (created {self.point_created})" if self.point_created else ""),
            f"- Verified as VM `{self.verification_vm}` on host `{self.esx_host}`, "
            f"isolation: {self.isolation}",
            f"- Started {self.started}, finished {self.finished} ({self.duration_s:.1f} s)",
            f"- Time to heartbeat (recovery time evidence): {rtt}",
            f"- Job: `{self.job_id}`",
            "",
            "| check | required | outcome | started | duration | detail |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.checks:
            detail = c.detail.replace("|", "\\|").replace("\n", " ")
            if c.artifact:
                detail += f" ([{c.artifact}]({c.artifact}))"
            lines.append(
                f"| {c.name} | {'yes' if c.required else 'no'} | {c.outcome.value} | "
                f"{c.started} | {c.duration_s:.2f} s | {detail} |"
            )
        shots = [c.artifact for c in self.checks if c.artifact.endswith(".png")]
        if shots:
            lines += ["", "## Console", "", *(f"![console]({s})" for s in shots)]
        lines += [
            "",
            "## Cleanup",
            "",
            "Powered off, unregistered, unmounted, unexported, overlay discarded."
            if self.cleanup_clean
            else "NOT clean: " + "; ".join(self.cleanup_errors),
        ]
        if not self.passed:
            lines += ["", "## Why it failed", "", *(f"- {f}" for f in self.failures)]
        return "\n".join(lines) + "\n"

    async def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` into ``directory`` (created owner-only)."""
        await run_sync(make_private_dirs, directory)
        paths = (directory / REPORT_JSON, directory / REPORT_MD)
        texts = (json.dumps(self.to_json(), indent=2) + "\n", self.to_markdown())
        for path, text in zip(paths, texts, strict=True):
            async with aiofiles.open(path, "w", encoding="utf-8") as f:
                await f.write(text)
        return paths
