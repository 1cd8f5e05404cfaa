"""How many storage vMotions run at once, per ESX host and per serving process.

A storage vMotion reads its VM's disks end to end through our NFS server; many at once would
starve the reads of the VMs still running from the backup. Each job takes a slot of its host and
one of the process before it starts relocating, and gives both back when the relocation ends
(done or failed); the rest wait their turn, still serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from liverecovery.config import Settings

__all__ = ["MigrationSlots"]


class MigrationSlots:
    """Slots for concurrent storage vMotions: ``per_host`` per ESX host, ``total`` in all."""

    def __init__(self, total: int, per_host: int) -> None:
        self.total = total
        self.per_host = per_host
        self._all = anyio.Semaphore(total)
        self._hosts: dict[str, anyio.Semaphore] = {}
        self.running: dict[str, int] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> MigrationSlots:
        return cls(settings.max_migrations, settings.max_migrations_per_host)

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Hold a slot of ``host`` and one of the process for the block (waiting for them)."""
        per_host = self._hosts.setdefault(host, anyio.Semaphore(self.per_host))
        async with per_host, self._all:
            self.running[host] = self.running.get(host, 0) + 1
            try:
                yield
            finally:
                self.running[host] -= 1
