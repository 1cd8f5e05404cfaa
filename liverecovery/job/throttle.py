"""How many storage vMotions run at once, per ESX host and per serving process.

A storage vMotion reads its VM's disks end to end through our NFS server; many at once would
starve the reads of the VMs still running from the backup. Each job takes a slot of its host and
one of the process before it starts relocating, and gives both back when the relocation ends
(done or failed), or earlier when its progress has stalled (``Settings.migration_stall_s``);
the rest wait their turn, still serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from liverecovery.config import Settings

__all__ = ["MigrationSlots", "Slot"]


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

    async def acquire(self, host: str) -> Slot:
        """Wait for a slot of ``host`` and one of the process; give them back with
        ``Slot.release``."""
        per_host = self._hosts.setdefault(host, anyio.Semaphore(self.per_host))
        await per_host.acquire()
        try:
            await self._all.acquire()
        except BaseException:
            per_host.release()
            raise
        self.running[host] = self.running.get(host, 0) + 1
        return Slot(self, host, per_host)

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[Slot]:
        """Hold a slot of ``host`` and one of the process for the block (waiting for them)."""
        held = await self.acquire(host)
        try:
            yield held
        finally:
            held.release()


class Slot:
    """One held migration slot; ``release`` gives it back (once; later calls do nothing)."""

    def __init__(self, slots: MigrationSlots, host: str, per_host: anyio.Semaphore) -> None:
        self._slots = slots
        self._host = host
        self._per_host = per_host
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._slots.running[self._host] -= 1
        self._slots._all.release()
        self._per_host.release()
