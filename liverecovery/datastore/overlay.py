"""``WriteOverlay``: a per-disk copy-on-write overlay at block granularity.

Writes to a disk served from a backup land here; the backup is never touched, nor read: the first
write to a block stores the whole block, the new bytes merged into the base bytes its user hands
down (``to_fill`` names the blocks that need them; ``FlatDisk`` reads them through the cache);
later writes to that block go straight to it. Reads return the blocks the overlay holds
(``held``); its user reads the rest from the base.

On disk, in a directory of its own (owner-only):

* ``data``: a sparse file; block ``i`` lives at offset ``i * block_size``.
* ``map``: a 32-byte header (magic, block size, disk size, CRC-32) then 12-byte records, one per
  overlay block (index, CRC-32), appended in the order blocks became durable.

Crash safety rests on one ordering rule: a block's map record is appended only after the block's
data has been ``fdatasync``\\ ed, and a stable write returns only after the record has been
``fdatasync``\\ ed too. So a record never points at data that did not reach the disk, and a crash can
only lose blocks no stable write was acknowledged for. UNSTABLE writes go to the page cache and
their new blocks' records wait in memory until ``commit()`` (or the next stable write): after a
crash those blocks are not held any more (they read from the base again), as NFS allows for uncommitted writes (the client
resends them). A torn record at the end of the map (a crash during an append) is dropped; a bad
record followed by good ones means the map was damaged, and ``open`` raises ``OverlayError``
rather than guess.

DATA_SYNC is handled as FILE_SYNC: the block map is the metadata needed to read the data back.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio
import attrs
from anyio.abc import AsyncResource

from liverecovery.datastore.flatdisk import DiskOverlay
from liverecovery.errors import OverlayError
from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.io.threads import InlineWrites, on_own_fd, run_read, run_write
from liverecovery.nfs.filesystem import Stability

__all__ = ["OverlayStats", "WriteOverlay"]

_MAGIC = b"LRWOMAP1"
_HEADER = struct.Struct("<8sQQI")  # magic, block size, disk size, reserved; then CRC-32
_HEADER_SIZE = _HEADER.size + 4
_RECORD = struct.Struct("<QI")  # block index, CRC-32 of the packed index
_DATA_NAME = "data"
_INLINE_WRITE_MAX = 256 * 1024
_MAP_NAME = "map"


@attrs.frozen
class OverlayStats:
    """``written_bytes`` accepted since open; ``overlay_blocks``/``overlay_bytes`` held now
    (persistent); ``commits`` since open (each an fdatasync of the data file)."""

    written_bytes: int
    overlay_blocks: int
    overlay_bytes: int
    commits: int


def _record(index: int) -> bytes:
    packed = struct.pack("<Q", index)
    return packed + struct.pack("<I", zlib.crc32(packed))


def _header(block_size: int, size: int) -> bytes:
    head = _HEADER.pack(_MAGIC, block_size, size, 0)
    return head + struct.pack("<I", zlib.crc32(head))


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _owner_only_opener(path: str, flags: int) -> int:
    """Open (creating if missing, never truncating) with mode 0o600."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteOverlay(AsyncResource, DiskOverlay):
    """Copy-on-write overlay of one disk of ``size`` bytes. Open with ``await WriteOverlay.open``.

    Safe for concurrent use from one event loop: concurrent first writes to one block create it
    once, from the first writer's base bytes, and never lose each other's bytes.
    """

    def __init__(
        self,
        directory: Path,
        *,
        size: int,
        block_size: int,
        data: io.FileIO,
        map_file: io.FileIO,
        durable: set[int],
    ) -> None:
        self.directory = directory
        self._size = size
        self._block_size = block_size
        self._data = data
        self._map = map_file
        self._blocks = set(durable)  # every block present (durable or pending)
        self._pending: set[int] = set()  # blocks whose map record is not yet durable
        self._creating: dict[int, anyio.Event] = {}
        self._commit_lock = anyio.Lock()
        self._closed = False
        self._written = 0
        self._commits = 0
        self._inline = InlineWrites(_INLINE_WRITE_MAX)
        self._write_seq = 0  # writes whose bytes reached the data file (the page cache)
        self._synced_seq = 0  # writes a completed commit made durable

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        size: int,
        block_size: int = 64 * 1024,
    ) -> WriteOverlay:
        """Open the overlay in ``directory``, creating it (mode 0o700) if needed.

        :raises ValueError: a negative size or a non-positive block size.
        :raises OverlayError: the existing overlay has another block size or disk size, its map is
            damaged, or its files cannot be created.
        """
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"overlay disk size must be >= 0, got {size!r}")
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"overlay block size must be positive, got {block_size!r}")
        path = Path(directory)
        data, map_file, durable = await run_write(cls._open_files, path, size, block_size)
        return cls(
            path,
            size=size,
            block_size=block_size,
            data=data,
            map_file=map_file,
            durable=durable,
        )

    @classmethod
    def _open_files(
        cls, path: Path, size: int, block_size: int
    ) -> tuple[io.FileIO, io.FileIO, set[int]]:
        map_path = path / _MAP_NAME
        try:
            make_private_dirs(path)
            if not map_path.exists():
                tmp = path / (_MAP_NAME + ".tmp")
                with open(tmp, "wb", buffering=0, opener=_owner_only_opener) as f:
                    f.write(_header(block_size, size))
                    os.fsync(f.fileno())
                os.replace(tmp, map_path)
            data = io.FileIO(path / _DATA_NAME, "r+", opener=_owner_only_opener)
            _fsync_dir(path)
        except OSError as exc:
            raise OverlayError(f"{path}: cannot create the write overlay: {exc.strerror}") from exc
        try:
            map_file = io.FileIO(map_path, "r+", opener=_owner_only_opener)
            try:
                durable = cls._load_map(map_file, map_path, size, block_size)
            except BaseException:
                map_file.close()
                raise
        except BaseException:
            data.close()
            raise
        return data, map_file, durable

    @staticmethod
    def _load_map(map_file: io.FileIO, map_path: Path, size: int, block_size: int) -> set[int]:
        raw = map_file.read()
        head = raw[:_HEADER_SIZE]
        if len(head) < _HEADER_SIZE or zlib.crc32(head[:-4]) != struct.unpack("<I", head[-4:])[0]:
            raise OverlayError(f"{map_path}: block map header is damaged")
        magic, map_block_size, map_size, _ = _HEADER.unpack(head[:-4])
        if magic != _MAGIC:
            raise OverlayError(f"{map_path}: not a write overlay block map")
        if (map_block_size, map_size) != (block_size, size):
            raise OverlayError(
                f"{map_path}: overlay was made for block size {map_block_size} and disk size "
                f"{map_size}, opened with block size {block_size} and disk size {size}"
            )
        durable: set[int] = set()
        n_blocks = -(-size // block_size)
        body = raw[_HEADER_SIZE:]
        good_end = 0
        bad_at: int | None = None
        for pos in range(0, len(body) - _RECORD.size + 1, _RECORD.size):
            index, crc = _RECORD.unpack_from(body, pos)
            valid = crc == zlib.crc32(body[pos : pos + 8]) and index < n_blocks
            if valid and bad_at is not None:
                raise OverlayError(
                    f"{map_path}: block map record at byte {_HEADER_SIZE + bad_at} is damaged "
                    "but later records are intact; refusing to guess which blocks are durable"
                )
            if valid:
                durable.add(index)
                good_end = pos + _RECORD.size
            elif bad_at is None:
                bad_at = pos
        if good_end != len(body):  # torn tail from a crash during an append: drop it
            map_file.truncate(_HEADER_SIZE + good_end)
            os.fsync(map_file.fileno())
        map_file.seek(0, io.SEEK_END)
        return durable

    # -- properties ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def stats(self) -> OverlayStats:
        last = (self._size - 1) // self._block_size if self._size else -1
        tail = self._size - last * self._block_size
        nbytes = len(self._blocks) * self._block_size
        if last in self._blocks:
            nbytes -= self._block_size - tail
        return OverlayStats(
            written_bytes=self._written,
            overlay_blocks=len(self._blocks),
            overlay_bytes=nbytes,
            commits=self._commits,
        )

    @property
    def written_bytes(self) -> int:
        """Bytes written to this overlay since it was opened."""
        return self.stats.written_bytes

    def has_block(self, index: int) -> bool:
        """Whether block ``index`` is held by the overlay (its reads never reach the base)."""
        return index in self._blocks

    def holds_any(self, offset: int, length: int) -> bool:
        """Whether the overlay holds any byte of ``[offset, offset + length)``."""
        bs, blocks = self._block_size, self._blocks
        return any(i in blocks for i in range(offset // bs, (offset + length - 1) // bs + 1))

    def held(self, offset: int, length: int) -> list[tuple[int, int]]:
        """``(offset, length)`` runs of the range (within the disk) the overlay holds, ascending
        and merged.

        :raises OverlayError: the overlay is closed.
        """
        self._check_open()
        end = min(offset + length, self._size)
        if offset < 0 or offset >= end:
            return []
        bs, blocks = self._block_size, self._blocks
        first, last = offset // bs, (end - 1) // bs
        if (
            (first not in blocks)
            if first == last
            else not any(map(blocks.__contains__, range(first, last + 1)))
        ):
            return []
        runs: list[tuple[int, int]] = []
        for block in range(first, last + 1):
            if block in blocks:
                lo, hi = max(offset, block * bs), min(end, (block + 1) * bs)
                if runs and sum(runs[-1]) == lo:
                    runs[-1] = (runs[-1][0], hi - runs[-1][0])
                else:
                    runs.append((lo, hi - lo))
        return runs

    def to_fill(self, offset: int, length: int) -> list[tuple[int, int]]:
        """``(offset, length)`` of each block a write of the range would create without covering
        it whole (at most its first and last block): the base bytes ``write`` needs.

        :raises ValueError: the range is outside the disk.
        :raises OverlayError: the overlay is closed.
        """
        self._check_open()
        self._check_range(offset, length)
        if length == 0:
            return []
        bs, end = self._block_size, offset + length
        out = []
        for block in dict.fromkeys((offset // bs, (end - 1) // bs)):
            start = block * bs
            stop = min(start + bs, self._size)
            if block not in self._blocks and (offset > start or end < stop):
                out.append((start, stop - start))
        return out

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self._size:
            raise ValueError(
                f"{self.directory}: write of {length} bytes at offset {offset} is outside "
                f"the disk of {self._size} bytes"
            )

    # -- writing -------------------------------------------------------------------------------

    async def write(
        self,
        offset: int,
        data: bytes,
        stability: Stability = Stability.UNSTABLE,
        base: Mapping[int, bytes] | None = None,
    ) -> Stability:
        """Write ``data`` at ``offset``; FILE_SYNC and DATA_SYNC are durable before returning.

        ``base`` maps the offset of each block ``to_fill`` named to its base bytes (asked before
        this call: a block other writers create meanwhile needs none).

        :returns: the stability achieved (FILE_SYNC for any stable request, else UNSTABLE).
        :raises ValueError: the range is outside the disk.
        :raises OverlayError: an I/O error on the overlay's files (names the file), or the base
            bytes of a new block partly written are missing.
        """
        self._check_open()
        self._check_range(offset, len(data))
        end = offset + len(data)
        bs = self._block_size
        view = memoryview(data)
        segments: list[tuple[int, int, memoryview]] = []  # (block, offset in block, bytes)
        pos = offset
        while pos < end:
            block, within = divmod(pos, bs)
            n = min(bs - within, end - pos)
            segments.append((block, within, view[pos - offset : pos - offset + n]))
            pos += n
        claimed = await self._claim([b for b, _, _ in segments])
        try:
            writes: list[tuple[int, bytes | memoryview]] = []
            for block, within, chunk in segments:
                if block in claimed:
                    writes.append((block * bs, self._new_block(block, within, chunk, base)))
                else:
                    writes.append((block * bs + within, chunk))
            size = sum(len(chunk) for _, chunk in writes)
            if self._inline.allowed(size):  # a page-cache copy: no thread hand-off
                try:
                    self._inline.run(self._pwrite_all, writes)
                except OSError as exc:
                    raise OverlayError(f"{self.directory}: overlay I/O failed: {exc}") from exc
            else:
                await self._io(self._pwrite_all, writes)
            for block in claimed:
                self._blocks.add(block)
                self._pending.add(block)
            self._write_seq += 1
        finally:
            for block in claimed:
                self._creating.pop(block).set()
        self._written += len(data)
        if stability == Stability.UNSTABLE:
            return Stability.UNSTABLE
        await self.commit()
        return Stability.FILE_SYNC

    async def _claim(self, blocks: list[int]) -> set[int]:
        """Claim, in ascending order (so writers never deadlock), the blocks to create."""
        claimed: set[int] = set()
        try:
            for block in blocks:
                while block not in self._blocks:
                    event = self._creating.get(block)
                    if event is None:
                        self._creating[block] = anyio.Event()
                        claimed.add(block)
                        break
                    await event.wait()
        except BaseException:
            for block in claimed:
                self._creating.pop(block).set()
            raise
        return claimed

    def _new_block(
        self, block: int, within: int, chunk: memoryview, bases: Mapping[int, bytes] | None
    ) -> bytes:
        start = block * self._block_size
        length = min(self._block_size, self._size - start)
        if within == 0 and len(chunk) == length:
            return bytes(chunk)
        base = None if bases is None else bases.get(start)
        if base is None:
            raise OverlayError(
                f"{self.directory}: block {block} is new and partly written, but its base bytes "
                "were not given (ask to_fill before write)"
            )
        if len(base) < length:
            base = base + bytes(length - len(base))
        return b"".join((base[:within], chunk, base[within + len(chunk) : length]))

    def _pwrite_all(self, writes: list[tuple[int, bytes | memoryview]]) -> None:
        fd = self._data.fileno()
        for position, chunk in writes:
            view = memoryview(chunk)
            while view:
                n = os.pwrite(fd, view, position)
                view, position = view[n:], position + n

    async def commit(self) -> None:
        """Make every write so far durable: fdatasync the data, then append and fdatasync the
        records of new blocks.

        :raises OverlayError: an I/O error (names the file).
        """
        self._check_open()
        target = self._write_seq
        async with self._commit_lock:
            if self._synced_seq >= target and target:
                # A commit that started after our writes reached the page cache made them
                # durable while we waited for the lock (group commit: concurrent FILE_SYNC
                # writes share one fdatasync instead of queueing one each).
                return
            seq = self._write_seq
            pending = sorted(self._pending)
            await self._io(self._sync, pending)
            self._pending.difference_update(pending)
            self._synced_seq = max(self._synced_seq, seq)
            self._commits += 1

    def _sync(self, pending: list[int]) -> None:
        os.fdatasync(self._data.fileno())
        if pending:
            records = b"".join(_record(b) for b in pending)
            written = self._map.write(records)
            if written != len(records):
                raise OSError(f"short write to the block map ({written} of {len(records)})")
            os.fdatasync(self._map.fileno())

    # -- reading -------------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        """The overlay's bytes of ``[offset, offset + length)`` (shorter at the end of the
        disk), zeros where it holds none: its user reads those from the base (see ``held``).

        :raises ValueError: a negative offset or length.
        :raises OverlayError: an I/O error on the overlay's data file.
        """
        self._check_open()
        if offset < 0 or length < 0:
            raise ValueError(f"{self.directory}: read at offset {offset} of {length} bytes")
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        runs = self.held(offset, end - offset)
        if not runs:
            return bytes(end - offset)
        try:
            fd = os.dup(self._data.fileno())  # the thread's own: aclose cannot pull it away
            parts: list[bytes] = await run_read(on_own_fd, _pread_all, fd, runs)
        except OSError as exc:
            raise OverlayError(f"{self.directory}: overlay I/O failed: {exc}") from exc
        if len(runs) == 1 and runs[0] == (offset, end - offset):
            return parts[0]
        out = bytearray(end - offset)
        for (start, n), part in zip(runs, parts, strict=True):
            out[start - offset : start - offset + n] = part
        return bytes(out)

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Commit outstanding UNSTABLE writes and close the files. Idempotent."""
        if self._closed:
            return
        try:
            await self.commit()
        finally:
            self._closed = True
            self._data.close()
            self._map.close()

    def _check_open(self) -> None:
        if self._closed:
            raise OverlayError(f"{self.directory}: write overlay is closed")

    async def _io(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await run_write(lambda: fn(*args, **kwargs))
        except OSError as exc:
            raise OverlayError(f"{self.directory}: overlay I/O failed: {exc}") from exc


def _pread_all(fd: int, ranges: list[tuple[int, int]]) -> list[bytes]:
    out = []
    for start, length in ranges:
        data = os.pread(fd, length, start)
        if len(data) < length:  # the sparse file ends before an all-zero tail
            data += bytes(length - len(data))
        out.append(data)
    return out
