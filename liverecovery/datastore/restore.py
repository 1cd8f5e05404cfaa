"""Background restore: fill the cache with every allocated block "as resources allow".

It walks the disks in the order a storage vMotion reads them (disk by disk, ascending offsets),
only over blocks that hold data, and steps aside for the VM: before each block it waits until no
foreground read has been in flight for a short quiet period (10 ms), so it never starts a backup
read in the gap between two of the VM's reads. ``depth`` blocks are restored at once (each started only in a quiet moment): one
at a time, a backup in an object store is read at a single GET stream's rate, well below what
the store serves to a few concurrent ranged GETs. An optional bandwidth limit caps its rate. While
the store holding the backup is unavailable (``BackupUnavailableError``), it waits and tries the
same block again: an outage pauses the restore, it never ends the job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import anyio
import anyio.lowlevel

from liverecovery.backends import ServedDisk
from liverecovery.errors import BackupUnavailableError

__all__ = ["BackgroundRestore", "allocated_blocks"]


def allocated_blocks(disk: ServedDisk) -> Iterator[int]:
    """Indices of the disk's blocks that hold data, ascending, each once."""
    bs = disk.block_size
    last = -1
    for start, end in disk.data_runs:
        for index in range(max(start // bs, last + 1), (end - 1) // bs + 1):
            last = index
            yield index


def _block_len(disk: ServedDisk, index: int) -> int:
    start = index * disk.block_size
    return min(disk.size, start + disk.block_size) - start


class BackgroundRestore:
    """Restores the allocated blocks of ``disks`` into the cache, foreground reads first."""

    def __init__(
        self,
        disks: Sequence[ServedDisk],
        *,
        bandwidth_bps: float | None = None,
        depth: int = 1,
        quiet_s: float = 0.01,
        unavailable_retry_s: float = 1.0,
    ) -> None:
        self._disks = list(disks)
        self._bandwidth = bandwidth_bps
        self._depth = max(1, depth)
        self._quiet_s = quiet_s
        self._unavailable_retry_s = unavailable_retry_s
        self.unavailable = 0
        """How many times a block waited for the backup's store to come back."""
        self.total_bytes = sum(_block_len(d, i) for d in self._disks for i in allocated_blocks(d))
        self.done_bytes = 0
        self.yields = 0

    async def run(self) -> None:
        """Restore every allocated block; returns when done (cancel to stop early)."""
        started = time.monotonic()
        todo = ((disk, index) for disk in self._disks for index in allocated_blocks(disk))
        if self._depth == 1:
            await self._work(todo, started)
            return
        async with anyio.create_task_group() as tg:
            for _ in range(self._depth):
                tg.start_soon(self._work, todo, started)

    async def _work(self, todo: Iterator[tuple[ServedDisk, int]], started: float) -> None:
        """Take the next block from ``todo`` (shared by the workers) until none is left."""
        for disk, index in todo:
            if await disk.wait_quiet(self._quiet_s):
                self.yields += 1
            while True:
                try:
                    await disk.restore_block(index)
                    break
                except BackupUnavailableError:
                    self.unavailable += 1
                    await anyio.sleep(self._unavailable_retry_s)
            self.done_bytes += _block_len(disk, index)
            if self._bandwidth:
                ahead = self.done_bytes / self._bandwidth - (time.monotonic() - started)
                if ahead > 0:
                    await anyio.sleep(ahead)
            else:
                await anyio.lowlevel.checkpoint()
