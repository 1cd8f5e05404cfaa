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

``restore_overlay`` lists the blocks of one disk, takes for each block the copy of the highest
epoch (a fenced node's late PUT lands in its own, older epoch, so it never hides a newer owner's
block) and writes them into a local overlay, stable, before that overlay serves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import anyio

from liverecovery.backends import SharedState
from liverecovery.datastore.flatdisk import DiskOverlay
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.errors import OverlayError
from liverecovery.nfs.filesystem import Stability

__all__ = [
    "StoreBackedOverlay",
    "overlay_blocks_key",
    "restore_overlay",
    "store_backed_overlays",
]


def overlay_blocks_key(job_id: str, disk: str) -> str:
    """The shared-state prefix of one disk's overlay blocks."""
    return f"jobs/{job_id}/overlay/{disk}"


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
        if epoch < 0:
            raise ValueError(f"lease epoch must be >= 0, got {epoch}")
        self.local = overlay
        self.state = state
        self.epoch = epoch
        self.prefix = overlay_blocks_key(job_id, disk)
        self._tags: dict[int, str] = {}  # block -> tag this node last wrote (this epoch)
        self._digests: dict[int, bytes] = {}  # block -> SHA-256 of the bytes last written
        self._locks: dict[int, anyio.Lock] = {}
        self._unsent: set[int] = set()  # blocks UNSTABLE writes touched, not yet in the store
        self.puts = 0

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
                digest = hashlib.sha256(data).digest()
                if self._digests.get(block) == digest:
                    return
                key = _block_key(self.prefix, self.epoch, block)
                tag = self._tags.get(block)
                if tag is None:
                    new = await self.state.create(key, data)
                    if new is None:  # there from before a restart of this node: take its tag
                        current = await self.state.get(key)
                        if current is not None and current.data == data:
                            new = current.etag
                        elif current is not None:
                            new = await self.state.replace(key, data, current.etag)
                else:
                    new = await self.state.replace(key, data, tag)
                if new is None:
                    raise OverlayError(
                        f"shared state key {key}: the block changed in the store under this "
                        f"node's lease epoch {self.epoch}; another writer holds it"
                    )
                self._tags[block] = new
                self._digests[block] = digest
                self.puts += 1
            except BaseException:
                self._unsent.add(block)
                raise

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
    """Write every block the store holds for ``disk`` (the highest epoch's copy of each, of
    epochs up to ``up_to_epoch`` if given) into ``overlay``, stable; how many blocks.

    :raises OverlayError: a key that is not ``<epoch>/<block>`` or a block of the wrong size
        (the store was written for another geometry): named, nothing guessed.
    """
    prefix = overlay_blocks_key(job_id, disk)
    newest: dict[int, tuple[int, str]] = {}
    for key in await state.keys(prefix):
        rest = key[len(prefix) + 1 :].split("/")
        if len(rest) != 2 or not all(part.isdigit() for part in rest):
            raise OverlayError(f"shared state key {key}: not an overlay block <epoch>/<block>")
        epoch, block = int(rest[0]), int(rest[1])
        if up_to_epoch is not None and epoch > up_to_epoch:
            continue
        if block not in newest or newest[block][0] < epoch:
            newest[block] = (epoch, key)
    bs, size = overlay.block_size, overlay.size
    for block, (_, key) in sorted(newest.items()):
        start = block * bs
        expected = min(bs, size - start)
        got = await state.get(key)
        if got is None:
            raise OverlayError(f"shared state key {key}: listed but gone while restoring")
        if expected <= 0 or len(got.data) not in (expected, bs):
            raise OverlayError(
                f"shared state key {key}: {len(got.data)} bytes, block {block} of a disk of "
                f"{size} bytes in {bs}-byte blocks needs {max(expected, 0)}"
            )
        await overlay.write(start, got.data[:expected], Stability.UNSTABLE)
    await overlay.commit()
    return len(newest)


def store_backed_overlays(
    state: SharedState, epoch: int
) -> Callable[[Path, int], Awaitable[DiskOverlay]]:
    """An overlay factory for ``FreBuilder``: each disk's overlay
    (``<job_results_dir>/jobs/<job id>/overlays/<disk>``) is first rebuilt from the store, then
    written through to it under ``epoch`` (the lease epoch this node serves under)."""

    async def open_overlay(directory: Path, size: int) -> DiskOverlay:
        job_id, disk = directory.parent.parent.name, directory.name
        local = await WriteOverlay.open(directory, size=size)
        try:
            await restore_overlay(state, job_id, disk, local)
        except BaseException:
            await local.aclose()
            raise
        return StoreBackedOverlay(local, state, job_id=job_id, disk=disk, epoch=epoch)

    return open_overlay
