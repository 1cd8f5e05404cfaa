"""When a served VM starts its storage vMotion: the migration trigger policies.

The seed's step 7 migrates "after the initial reads needed to make the VM usable". A policy waits
for that moment, watching the bytes the ESX host has read; ``job.migrate_now()`` always
overrides it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import anyio
import attrs

from liverecovery.config import MiB

__all__ = ["DelayedMigration", "ManualMigration", "MigrationPolicy", "ReadRateMigration"]

BytesServed = Callable[[], int]
"""Returns the bytes the ESX host has read from the job's disks so far."""


@runtime_checkable
class MigrationPolicy(Protocol):
    """**Protocol:** returns when the job should start migrating."""

    async def wait_until_ready(self, bytes_served: BytesServed) -> None: ...


@attrs.frozen
class DelayedMigration:
    """Migrate a fixed time after power-on (0: at once)."""

    seconds: float = 0.0

    async def wait_until_ready(self, bytes_served: BytesServed) -> None:
        await anyio.sleep(self.seconds)


@attrs.frozen
class ManualMigration:
    """Never migrate on its own: wait for ``job.migrate_now()`` (bounded by ``timeouts.serve``)."""

    async def wait_until_ready(self, bytes_served: BytesServed) -> None:
        await anyio.sleep_forever()


@attrs.frozen
class ReadRateMigration:
    """Migrate once the boot's reads have settled: the read rate stayed low for a window.

    Defaults: a guest OS boot reads hundreds of MiB in its first minute, then falls to a trickle
    of logs and page-ins. Below 4 MiB/s sustained for 20 s, the initial reads are over; the
    storage vMotion then competes with little foreground traffic. ``min_wait_s`` (10 s) lets
    the boot start reading at all before the first window counts; ``max_wait_s`` (30 min) bounds
    the wait for a VM that never goes quiet, because serving from the backup is the slow path.
    """

    rate_bps: float = 4 * MiB
    window_s: float = 20.0
    min_wait_s: float = 10.0
    max_wait_s: float = 1800.0
    sample_s: float = 1.0

    async def wait_until_ready(self, bytes_served: BytesServed) -> None:
        start = time.monotonic()
        samples: deque[tuple[float, int]] = deque([(start, bytes_served())])
        with anyio.move_on_after(self.max_wait_s):
            while True:
                await anyio.sleep(self.sample_s)
                now = time.monotonic()
                samples.append((now, bytes_served()))
                # Keep the newest sample at least a window old as the rate's starting point.
                while len(samples) > 1 and now - samples[1][0] >= self.window_s:
                    samples.popleft()
                if now - start < max(self.min_wait_s, self.window_s):
                    continue
                t0, b0 = samples[0]
                if (samples[-1][1] - b0) / max(now - t0, 1e-9) < self.rate_bps:
                    return
