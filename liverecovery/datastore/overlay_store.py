"""A write overlay whose stable writes are in the shared state before they are acknowledged, and
the restore a node that takes a dead node's address over opens its overlay from.

``StoreBackedOverlay`` wraps a local ``WriteOverlay``: a FILE_SYNC or DATA_SYNC write, once
durable locally, PUTs each 64 KiB block it touched to
``jobs/<job id>/overlay/<disk>/<epoch:010d>/<block:012d>`` (the ``epoch`` of the lease the node
serves under) before it returns; UNSTABLE writes mark their blocks and ``commit`` PUTs them all.
So no write a client was told is stable lives only on one node. A block's first PUT in an epoch
is a ``create``, later ones a ``replace`` on the tag this node last wrote (a block whose bytes
did not change is not sent again: a tag may be a digest of the bytes). A PUT the store does not
take raises (``BackupUnavailableError``: the client is told to retry, JUKEBOX), so the write is
not acknowledged.

``restore_overlay`` writes the blocks of one disk into a local overlay, stable, before that
overlay serves: those of the newest epoch with a restored-complete marker, and no other
(``datastore/store_epochs.py``); the overlay factory then copies them into its own epoch and
marks it complete, so a fenced node's late PUT into an older epoch is never seen by a later
owner. Without any marker, each block's copy of the highest epoch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import anyio

from liverecovery.backends import SharedState
from liverecovery.datastore.flatdisk import DiskOverlay
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.datastore.store_epochs import (
    EpochWriter,
    complete_epoch,
    mark_restored,
    run_limited,
)
from liverecovery.errors import OverlayError
from liverecovery.nfs.filesystem import Stability

__all__ = [
    "RESTORE_BATCH",
    "StoreBackedOverlay",
    "overlay_blocks_key",
    "overlay_part",
    "restore_overlay",
    "store_backed_overlays",
]


RESTORE_BATCH = 256
"""Blocks fetched (in parallel) before they are written into the overlay: 16 MiB at most."""


def overlay_blocks_key(job_id: str, disk: str) -> str:
    """The shared-state prefix of one disk's overlay blocks."""
    return f"jobs/{job_id}/overlay/{disk}"


def overlay_part(disk: str) -> str:
    """The part name of one disk's overlay in the restored-complete markers."""
    return f"overlay-{disk}"


def _block_key(prefix: str, epoch: int, block: int) -> str:
    return f"{prefix}/{epoch:010d}/{block:012d}"


class StoreBackedOverlay(DiskOverlay):
    """``overlay`` (local, durable) whose stable writes are also in ``state`` before they
    return; ``epoch`` is the lease epoch this node serves the disk under."""

    def __init__(
        self,
        overlay: WriteOverlay,
        state: SharedState,
        *,
        job_id: str,
        disk: str,
        epoch: int,
    ) -> None:
        self.local = overlay
        self.state = state
        self.epoch = epoch
        self.job_id = job_id
        self.disk = disk
        self.prefix = overlay_blocks_key(job_id, disk)
        self._writer = EpochWriter(state, epoch)
        self._locks: dict[int, anyio.Lock] = {}
        self._unsent: set[int] = set()  # blocks UNSTABLE writes touched, not yet in the store

    @property
    def puts(self) -> int:
        """PUTs of blocks this overlay sent."""
        return self._writer.puts

    # -- DiskOverlay, delegated ----------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.local.size

    @property
    def block_size(self) -> int:
        return self.local.block_size

    @property
    def written_bytes(self) -> int:
        return self.local.written_bytes

    def held(self, offset: int, length: int) -> Sequence[tuple[int, int]]:
        return self.local.held(offset, length)

    def holds_any(self, offset: int, length: int) -> bool:
        return self.local.holds_any(offset, length)

    def to_fill(self, offset: int, length: int) -> Sequence[tuple[int, int]]:
        return self.local.to_fill(offset, length)

    async def read(self, offset: int, length: int) -> bytes:
        return await self.local.read(offset, length)

    # -- writing -------------------------------------------------------------------------------

    async def write(
        self,
        offset: int,
        data: bytes,
        stability: Stability = Stability.UNSTABLE,
        base: Mapping[int, bytes] | None = None,
    ) -> Stability:
        """Write locally; a stable write's blocks are in the store before this returns.

        :raises BackupUnavailableError: the store did not take a block (not acknowledged).
        :raises OverlayError: the local overlay failed, or another writer changed a block of
            this node's epoch in the store.
        """
        achieved = await self.local.write(offset, data, stability, base)
        if not data:
            return achieved
        bs = self.local.block_size
        blocks = range(offset // bs, (offset + len(data) - 1) // bs + 1)
        if achieved == Stability.UNSTABLE:
            self._unsent.update(blocks)
        else:
            await self._send(blocks)
        return achieved

    async def commit(self) -> None:
        """Make every write durable locally, then put every block not yet in the store."""
        await self.local.commit()
        await self._send(sorted(self._unsent))

    async def _send(self, blocks: Sequence[int]) -> None:
        for block in blocks:
            await self._send_block(block)

    async def _send_block(self, block: int) -> None:
        lock = self._locks.setdefault(block, anyio.Lock())
        async with lock:  # the read below sees every write that landed before it
            self._unsent.discard(block)
            try:
                bs = self.local.block_size
                data = await self.local.read(block * bs, bs)
                await self._writer.put(_block_key(self.prefix, self.epoch, block), data)
            except BaseException:
                self._unsent.add(block)
                raise

    async def adopt(self, blocks: Sequence[int]) -> None:
        """Write ``blocks`` (restored from an older epoch) into this owner's epoch, then mark
        the epoch restored-complete: later owners restore from this epoch alone."""
        await run_limited([partial(self._send_block, b) for b in blocks])
        await mark_restored(self.state, self.job_id, overlay_part(self.disk), self.epoch)

    async def aclose(self) -> None:
        """Commit (locally and to the store), then close the local overlay."""
        try:
            await self.commit()
        finally:
            await self.local.aclose()


async def restore_overlay(
    state: SharedState,
    job_id: str,
    disk: str,
    overlay: WriteOverlay,
    *,
    up_to_epoch: int | None = None,
) -> int:
    """Write the blocks the store holds for ``disk`` into ``overlay``, stable (those of the
    newest restored-complete epoch up to ``up_to_epoch``; without a marker, each block's copy
    of the highest epoch); how many blocks.

    :raises OverlayError: a key that is not ``<epoch>/<block>`` or a block of the wrong size
        (the store was written for another geometry): named, nothing guessed.
    """
    _, blocks = await _restore_overlay(state, job_id, disk, overlay, up_to_epoch)
    return len(blocks)


async def _restore_overlay(
    state: SharedState,
    job_id: str,
    disk: str,
    overlay: WriteOverlay,
    up_to_epoch: int | None,
) -> tuple[int | None, list[int]]:
    """``restore_overlay``: (the epoch restored from, None for none or several; the blocks)."""
    prefix = overlay_blocks_key(job_id, disk)
    source = await complete_epoch(state, job_id, overlay_part(disk), up_to_epoch)
    listed = prefix if source is None else f"{prefix}/{source:010d}"
    newest: dict[int, tuple[int, str]] = {}
    for key in await state.keys(listed):
        rest = key[len(prefix) + 1 :].split("/")
        if len(rest) != 2 or not all(part.isdigit() for part in rest):
            raise OverlayError(f"shared state key {key}: not an overlay block <epoch>/<block>")
        epoch, block = int(rest[0]), int(rest[1])
        if up_to_epoch is not None and epoch > up_to_epoch:
            continue
        if block not in newest or newest[block][0] < epoch:
            newest[block] = (epoch, key)
    bs, size = overlay.block_size, overlay.size
    fetched: dict[int, bytes] = {}

    async def fetch(block: int, key: str) -> None:
        expected = min(bs, size - block * bs)
        got = await state.get(key)
        if got is None:
            raise OverlayError(f"shared state key {key}: listed but gone while restoring")
        if expected <= 0 or len(got.data) not in (expected, bs):
            raise OverlayError(
                f"shared state key {key}: {len(got.data)} bytes, block {block} of a disk of "
                f"{size} bytes in {bs}-byte blocks needs {max(expected, 0)}"
            )
        fetched[block] = got.data[:expected]

    order = sorted(newest.items())
    for i in range(0, len(order), RESTORE_BATCH):  # GETs in parallel, bounded memory
        await run_limited([partial(fetch, b, key) for b, (_, key) in order[i : i + RESTORE_BATCH]])
        for block in sorted(fetched):
            await overlay.write(block * bs, fetched.pop(block), Stability.UNSTABLE)
    await overlay.commit()
    return source, sorted(newest)


def store_backed_overlays(
    state: SharedState, epoch: int
) -> Callable[[Path, int], Awaitable[DiskOverlay]]:
    """An overlay factory for ``FreBuilder``: each disk's overlay
    (``<job_results_dir>/jobs/<job id>/overlays/<disk>``) is first rebuilt from the store, its
    blocks copied into ``epoch`` (the lease epoch this node serves under) and the epoch marked
    restored-complete, then written through to it."""

    async def open_overlay(directory: Path, size: int) -> DiskOverlay:
        job_id, disk = directory.parent.parent.name, directory.name
        local = await WriteOverlay.open(directory, size=size)
        try:
            source, blocks = await _restore_overlay(state, job_id, disk, local, epoch)
            overlay = StoreBackedOverlay(local, state, job_id=job_id, disk=disk, epoch=epoch)
            await overlay.adopt([] if source == epoch else blocks)
        except BaseException:
            await local.aclose()
            raise
        return overlay

    return open_overlay
