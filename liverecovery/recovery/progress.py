"""A progress display for one job: a terminal bar, or a widget in Jupyter (``tqdm.auto``).

job = await lr.start(spec)
await show_progress(job)  # in a notebook cell: a live bar; returns when the job ends
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm

from liverecovery.job.events import CompensationRan, JobWarning, Progress, StateChanged
from liverecovery.job.job import RecoveryJob

__all__ = ["show_progress"]


async def show_progress(job: RecoveryJob, *, file: TextIO | None = None) -> None:
    """Follow ``job``'s events with a progress bar over the bytes it moves, until it ends.

    The bar counts bytes restored in the background, then bytes moved by the storage vMotion;
    its label is the job's state.
    """
    out = file or sys.stderr
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, file=out, leave=True)
    try:
        async for event in job.events():
            if isinstance(event, StateChanged):
                bar.set_description_str(f"{job.spec.vm}: {event.state.value}")
            elif isinstance(event, Progress):
                migrating = event.bytes_migrated > 0
                total = event.disk_bytes if migrating else event.bytes_total
                done = event.bytes_migrated if migrating else event.bytes_restored
                bar.total = max(total, done)
                bar.n = done
                bar.set_postfix_str(f"served {event.bytes_served / 2**20:.1f} MiB", refresh=False)
                bar.refresh()
            elif isinstance(event, CompensationRan) and event.error:
                bar.write(f"{event.name} failed: {event.error}", file=out)
            elif isinstance(event, JobWarning):
                bar.write(f"warning: {event.message}", file=out)
    finally:
        bar.close()
