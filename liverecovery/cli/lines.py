"""Plain progress lines for logs and scripts: each state as it happens, then one summary line.

On a terminal the commands draw a progress bar instead; these lines are for everything else
(a pipe, a service manager's journal, CI), where a bar is noise and silence looks like a hang.
"""

from __future__ import annotations

import sys
from typing import TextIO

from liverecovery.job.events import JobWarning, StateChanged
from liverecovery.job.job import RecoveryJob
from liverecovery.job.summary import JobSummary

__all__ = ["print_states", "summary_line"]


async def print_states(job: RecoveryJob, *, file: TextIO | None = None) -> None:
    """Print ``<seconds>s  <state>`` for each state the job enters, as it enters it, and each
    warning; returns when the job ends."""
    out = file or sys.stdout
    async for event in job.events():
        if isinstance(event, StateChanged):
            print(f"{event.at:8.3f}s  {event.state}", file=out, flush=True)
        elif isinstance(event, JobWarning):
            print(f"warning: job {job.id}: {event.message}", file=sys.stderr, flush=True)


def summary_line(summary: JobSummary) -> str:
    """``job ID: VM completed in 12.3s``: one line a script can grep (a failed job's error has
    its own line on stderr)."""
    total = sum(summary.timings.values())
    return f"job {summary.job_id}: {summary.vm} {summary.state} in {total:.1f}s"
