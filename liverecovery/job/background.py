"""What a job runs beside its steps from power-on until cleanup or rollback: the background
restore of its served disks and its periodic progress reports.

Stopped once and for good (before cleanup or a rollback): a task that starts after the stop
ends at once, so nothing restores or reports while the job undoes what it did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from liverecovery.backends import ServedDisk
from liverecovery.config import Settings
from liverecovery.datastore.restore import BackgroundRestore

__all__ = ["Background"]


class Background:
    """The background tasks of one job; ``report`` is called at each progress tick."""

    def __init__(self, settings: Settings, report: Callable[[], None]) -> None:
        self._settings = settings
        self._report = report
        self._scopes: list[anyio.CancelScope] = []
        self._stopped = False
        self.restore: BackgroundRestore | None = None
        """The restore of the served disks, once started (its byte counts feed the stats)."""

    def start(self, tg: anyio.abc.TaskGroup, disks: Sequence[ServedDisk]) -> None:
        """Start restoring ``disks`` (if any) and reporting progress, in ``tg``."""
        if disks:
            self.restore = BackgroundRestore(
                list(disks),
                bandwidth_bps=self._settings.restore_bandwidth_bps or None,
                depth=self._settings.restore_depth,
            )
            tg.start_soon(self._run_restore, self.restore)
        tg.start_soon(self._report_progress)

    def stop(self) -> None:
        """Stop restoring and reporting (until ``restart``)."""
        self._stopped = True
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()

    def restart(self, tg: anyio.abc.TaskGroup, disks: Sequence[ServedDisk]) -> None:
        """Start again after ``stop``: a rollback that could not power the VM off leaves it
        running from the backup, so its restore and reports go on (cached blocks are hits)."""
        self._stopped = False
        self.start(tg, disks)

    def _scope(self) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        if self._stopped:
            scope.cancel()
        self._scopes.append(scope)
        return scope

    async def _report_progress(self) -> None:
        with self._scope():
            while True:
                await anyio.sleep(self._settings.progress_interval_s)
                self._report()

    async def _run_restore(self, restore: BackgroundRestore) -> None:
        with self._scope():
            await restore.run()
            self._report()
