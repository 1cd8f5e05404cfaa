"""``DiskBlockCache``: the circular block cache (the seed's 3DFS cache), a ``BlockCache``.

Blocks live one per file under ``<root>/blocks/`` (unlinking a file is how space is given back),
named ``<source hash>/<index high bits>/<index>-<generation>``: the generation makes every stored
copy's name unique, so an eviction still running in a worker thread can never delete a newer copy
of the same block. The index (``index.py``) maps keys to (generation, length, CRC-32).

* A hit costs one ``pread`` and one CRC-32 in a worker thread (zlib's CRC-32 runs at several GB/s,
  3x blake2b, and catches every burst error up to 32 bits). A block whose length or CRC does not
  match is discarded and fetched again; it is never served.
* Once verified in this process, a block is read (``lookup``, ``read_range``) through a descriptor kept
  open in a bounded LRU (``max_open_files``): a page-cached range is copied on the event loop with
  ``preadv(RWF_NOWAIT)``, no open/close per read. Kept descriptors are used and closed only on the
  event loop, never across an ``await``, so a read can never meet a closed or reused descriptor
  number; a descriptor is closed when its block is forgotten (evicted, found corrupt or unreadable)
  and when the cache closes. Block files are never rewritten in place (every stored copy gets a
  new generation and a new name), so a kept descriptor always reads the bytes that were verified.
* A ``lookup`` that misses makes its caller the block's filler (``fill`` or ``abandon``); other
  lookups of that block wait for the filler's bytes (``fills.py``), so the backup is read once.
* After every insert (and on ``prune()``) the least-recently-used unpinned blocks are deleted until
  the filesystem has ``min_free_percent`` free again. A block being read is pinned; callers may pin
  more with ``pinned()``. If even that is not enough, the new block is served but not stored.
* Job reservations (preflight's max(20 GiB, 15 %)) are persisted in the index so a crashed job's
  reservation can still be released at cleanup. Space held by unpinned cached blocks counts as
  available to a reservation: it is reclaimed on demand, as a circular cache does.

Files are created owner-only (0o600, directories 0o700): cached blocks are the customer's data.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import resource
import sqlite3
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

import anyio
import attrs
from anyio.abc import AsyncResource

from liverecovery.backends import BlockCache, BlockKey, CacheSpace
from liverecovery.cache.fills import Fills
from liverecovery.cache.index import BlockIndex, IndexEntry, LoadedIndex
from liverecovery.cache.space import SpaceProbe, StatvfsProbe, allocated_size
from liverecovery.config import DEFAULT_CACHE_MAX_OPEN_FILES, GiB, MiB, Settings
from liverecovery.errors import CacheError, CacheSpaceError, SettingsError
from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.io.ranges import FileRange
from liverecovery.io.threads import run_read, run_write

__all__ = ["CacheStats", "DiskBlockCache"]

log = logging.getLogger(__name__)

_INDEX_NAME = "index.sqlite"
_BLOCKS_DIR = "blocks"


@attrs.frozen
class CacheStats:
    """Counters since the cache was opened, plus what it currently holds.

    ``hits`` were served from disk, ``misses`` made their caller the block's filler,
    ``shared_misses`` waited for another caller's fill, ``corrupt_blocks`` failed their checksum
    and were refetched,
    ``unstored_blocks`` were served but not kept for lack of space.
    """

    hits: int
    misses: int
    shared_misses: int
    corrupt_blocks: int
    evicted_blocks: int
    unstored_blocks: int
    blocks: int
    cached_bytes: int


def _human(nbytes: int) -> str:
    return f"{nbytes} bytes ({nbytes / GiB:.2f} GiB)"


_NOWAIT: Final[int] = getattr(os, "RWF_NOWAIT", 0)  # 0: not on this platform


DEFAULT_MAX_OPEN_FILES: Final = DEFAULT_CACHE_MAX_OPEN_FILES
"""Block files ``read_range`` keeps open by default: 256 MiB of hot 1 MiB blocks, a quarter of
the usual 1024-descriptor soft limit."""


def _pread_and_close(fd: int, start: int, length: int) -> bytes:
    """Read from a descriptor this call owns (a ``dup`` made for a worker thread), then close it."""
    try:
        return os.pread(fd, length, start)
    finally:
        os.close(fd)


def _read_part(path: str, start: int, length: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, length, start)
    finally:
        os.close(fd)


def _open_file_budget(wanted: int) -> int:
    """``wanted``, but at most a quarter of the soft descriptor limit (and at least 1)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft // 4))


def _read_verified(path: str, length: int, crc: int) -> bytes | None:
    """The block's bytes, or None when the file is missing, of another length, or fails its CRC."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        data = os.pread(fd, length + 1, 0)
    finally:
        os.close(fd)
    if len(data) != length or zlib.crc32(data) != crc:
        return None
    return data


class DiskBlockCache(AsyncResource, BlockCache):
    """The on-disk circular block cache. Open with ``await DiskBlockCache.open(root)``.

    :raises CacheError: from every method once closed, or when the cache directory is unusable.
    """

    def __init__(
        self,
        root: Path,
        *,
        block_size: int,
        min_free_percent: float,
        probe: SpaceProbe,
        index: BlockIndex,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
    ) -> None:
        self.root = root
        self.min_free_percent = min_free_percent
        self._block_size = block_size
        self._probe = probe
        self._index = index
        self._blocks_dir = root / _BLOCKS_DIR
        self._entries: OrderedDict[BlockKey, IndexEntry] = OrderedDict()  # oldest use first
        self._cached_bytes = 0  # allocated size of stored blocks
        self._pins: dict[BlockKey, int] = {}
        self._verified: dict[BlockKey, int] = {}
        """Generation of each block whose file passed its CRC (or was written) in this process."""
        self._fills: Fills[BlockKey] = Fills()
        self._max_fds = _open_file_budget(max_open_files)
        self._fds: OrderedDict[BlockKey, tuple[int, IndexEntry]] = OrderedDict()
        """Kept-open descriptors of verified blocks (least recently read first), with the entry
        each was opened for. A key is here only while that entry is current and verified."""
        self._nowait = _NOWAIT != 0
        self._scratch = memoryview(bytearray(block_size))
        self._touched: dict[BlockKey, int] = {}
        self._hot: tuple[BlockKey, int, IndexEntry] | None = None
        """The block ``read_range`` read last, its kept descriptor and entry, while it is still
        the most recently used block and kept open: sequential reads hit one block many times
        in a row, and reading it again needs no lookup and changes no LRU order."""
        self._reservations: dict[str, int] = {}
        self._used_seq = 0
        self._next_gen = 1
        self._source_dirs: dict[str, str] = {}
        self._made_dirs: set[str] = set()
        self._store_lock = anyio.Lock()
        self._closed = False
        self._hits = self._misses = self._shared = self._corrupt = 0
        self._evicted = self._unstored = 0

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        root: str | os.PathLike[str],
        *,
        block_size: int = MiB,
        min_free_percent: float = 5.0,
        probe: SpaceProbe | None = None,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
    ) -> DiskBlockCache:
        """Open (creating if needed) the cache at ``root`` and load its index.

        Block files the index does not know (e.g. written just before a crash) are deleted.
        ``max_open_files`` bounds the block files kept open for ``read_range`` (at most a quarter
        of the process's descriptor limit is used, whatever is asked).

        :raises SettingsError: a non-positive block size or ``max_open_files``, or a percentage
            outside [0, 100).
        :raises CacheError: the directory or index cannot be created.
        """
        if not isinstance(block_size, int) or block_size <= 0:
            raise SettingsError(f"cache block size must be a positive integer, got {block_size!r}")
        if not isinstance(max_open_files, int) or max_open_files <= 0:
            raise SettingsError(
                f"cache max_open_files must be a positive integer, got {max_open_files!r}"
            )
        if not 0 <= min_free_percent < 100:
            raise SettingsError(
                f"cache_min_free_percent must be in [0, 100), got {min_free_percent!r}"
            )
        root_path = Path(root)
        index, loaded = await run_write(cls._open_index, root_path, block_size)
        cache = cls(  # constructed on the event loop: it owns anyio primitives
            root_path,
            block_size=block_size,
            min_free_percent=min_free_percent,
            probe=probe or StatvfsProbe(root_path),
            index=index,
            max_open_files=max_open_files,
        )
        if loaded.wiped:
            log.warning("%s: cache index was unreadable or for another block size; emptied", root)
        for key, entry in loaded.entries:
            cache._entries[key] = entry
            cache._cached_bytes += allocated_size(entry.length)
        cache._reservations = dict(loaded.reservations)
        cache._next_gen = loaded.next_gen
        cache._used_seq = loaded.last_used
        await run_write(cache._remove_orphans)
        return cache

    @classmethod
    async def from_settings(
        cls, settings: Settings, *, probe: SpaceProbe | None = None
    ) -> DiskBlockCache:
        """Open the cache at ``settings.effective_cache_root`` with the settings' block size,
        minimum free percentage and open-file bound."""
        return await cls.open(
            settings.effective_cache_root,
            block_size=settings.cache_block_size,
            min_free_percent=settings.cache_min_free_percent,
            max_open_files=settings.cache_max_open_files,
            probe=probe,
        )

    @staticmethod
    def _open_index(root: Path, block_size: int) -> tuple[BlockIndex, LoadedIndex]:
        try:
            make_private_dirs(root / _BLOCKS_DIR)
        except OSError as exc:
            raise CacheError(f"{root}: cannot create the cache directory: {exc.strerror}") from exc
        return BlockIndex.open(root / _INDEX_NAME, block_size)

    def _remove_orphans(self) -> None:
        expected = {self._block_path(k, e) for k, e in self._entries.items()}
        for dirpath, _dirnames, filenames in os.walk(self._blocks_dir):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if path not in expected:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

    # -- the BlockCache protocol ---------------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self._block_size

    async def lookup(self, key: BlockKey, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset + length)`` of the block (shorter where it ends), or None: a
        miss, and the caller is now the block's filler (``fill`` or ``abandon``).

        A block verified in this process is read through its kept descriptor (inline when the
        page cache holds the range, see ``read_range``); another stored block is read whole and
        checked against its CRC first (a block that fails is forgotten: a miss); a block being
        filled is waited for.

        :raises CacheError: the cache is closed.
        :raises ValueError: a negative offset or a non-positive length.
        :raises Exception: the error the block's filler abandoned it with.
        """
        if self._closed:
            raise CacheError(f"cache {self.root} is closed")
        data = self._read_inline(key, offset, length)
        if data is not None:
            return data
        return await self._lookup_slow(key, offset, length)

    async def _lookup_slow(self, key: BlockKey, offset: int, length: int) -> bytes | None:
        if offset < 0 or length <= 0:
            raise ValueError(f"lookup of {key} at {offset} of {length} bytes")
        entry = self._entries.get(key)
        if entry is not None:
            if offset >= entry.length:
                return b""
            if self._verified.get(key) == entry.gen:
                data = await self.read_range(key, offset, min(length, entry.length - offset))
                if data is not None:
                    return data
            entry = self._entries.get(key)
            if entry is not None:
                block = await self._read_entry(key, entry)
                if block is not None:
                    return block[offset : offset + length]
        shared = await self._fills.join(key)
        if shared is None:
            self._misses += 1
            return None
        self._shared += 1
        return shared[offset : offset + length]

    async def fill(self, key: BlockKey, data: bytes) -> None:
        """Store the block's bytes and hand them to the lookups waiting for them. A block that
        cannot be stored (no space, an I/O error) is still handed over.

        :raises CacheError: more than ``block_size`` bytes, or the cache is closed (the waiters
            get the error too).
        """
        await self._fill(key, data, cold=False)

    async def fill_cold(self, key: BlockKey, data: bytes) -> None:
        """``fill``, the block stored as the least recently used (see ``BlockCache.fill_cold``):
        evicted first, moved up by its next hit.

        :raises CacheError: as ``fill``.
        """
        await self._fill(key, data, cold=True)

    async def _fill(self, key: BlockKey, data: bytes, *, cold: bool) -> None:
        if self._closed or len(data) > self._block_size:
            error = CacheError(
                f"cache {self.root} is closed"
                if self._closed
                else f"fill of {key}: {len(data)} bytes, more than the block size "
                f"{self._block_size}"
            )
            self._fills.end(key, error)
            raise error
        self._fills.hand_over(key, data)  # waiters need not wait for the store
        try:
            if data:
                try:
                    await self._store(key, data, cold=cold)
                except (OSError, sqlite3.Error) as exc:  # e.g. ENOSPC: serve it uncached
                    self._unstored += 1
                    log.warning("%s: cannot store block %s: %s", self.root, key, exc)
        finally:
            self._fills.end(key)

    def abandon(self, key: BlockKey, error: Exception | None = None) -> None:
        """Give up filling the block (see ``BlockCache.abandon``)."""
        self._fills.end(key, error)

    async def space(self) -> CacheSpace:
        """Current size and free space of the cache's filesystem and outstanding reservations."""
        self._check_open()
        usage = await run_read(self._probe.usage)
        return CacheSpace(
            total_bytes=usage.total_bytes,
            free_bytes=usage.free_bytes,
            reserved_bytes=sum(self._reservations.values()),
        )

    async def reserve(self, job_id: str, nbytes: int) -> None:
        """Reserve ``nbytes`` for ``job_id`` (a second call replaces the job's amount).

        Available = free + bytes of unpinned cached blocks (reclaimable) - the minimum free space -
        other jobs' reservations.

        :raises CacheSpaceError: not enough space; the message names every number.
        :raises ValueError: an empty job id or a negative size.
        """
        self._check_open()
        if not job_id:
            raise ValueError("job id must not be empty")
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"reservation for job {job_id!r} must be >= 0 bytes, got {nbytes!r}")
        async with self._store_lock:
            usage = await run_read(self._probe.usage)
            min_free = self._min_free(usage.total_bytes)
            others = sum(v for k, v in self._reservations.items() if k != job_id)
            reclaimable = self._cached_bytes - sum(
                allocated_size(self._entries[k].length) for k in self._pins if k in self._entries
            )
            available = usage.free_bytes + reclaimable - min_free - others
            if nbytes > available:
                raise CacheSpaceError(
                    f"cache {self.root}: job {job_id!r} needs {_human(nbytes)} but only "
                    f"{_human(max(0, available))} are available: {_human(usage.free_bytes)} free "
                    f"of {_human(usage.total_bytes)}, {_human(reclaimable)} reclaimable from "
                    f"cached blocks, {_human(min_free)} kept free "
                    f"({self.min_free_percent:g} %), {_human(others)} reserved by other jobs"
                )
            await run_write(self._index.set_reservation, job_id, nbytes)
            self._reservations[job_id] = nbytes

    async def release(self, job_id: str) -> None:
        """Release a job's reservation; releasing an unknown job is a no-op."""
        self._check_open()
        if job_id not in self._reservations:
            return
        async with self._store_lock:
            await run_write(self._index.set_reservation, job_id, None)
            self._reservations.pop(job_id, None)

    def reservations(self) -> Mapping[str, int]:
        """Job id to reserved bytes (a read-only snapshot), persisted across restarts."""
        return MappingProxyType(dict(self._reservations))

    async def aclose(self) -> None:
        """Flush the last-use order and close the index. Idempotent."""
        if self._closed:
            return
        self._closed = True  # reads refuse from here on
        self._close_all_fds()
        async with self._store_lock:
            touched, self._touched = self._touched, {}
            await run_write(self._close_sync, touched)

    def _close_sync(self, touched: dict[BlockKey, int]) -> None:
        try:
            if touched:
                self._index.touch(touched)
        finally:
            self._index.close()

    # -- beyond the protocol -------------------------------------------------------------------

    @property
    def stats(self) -> CacheStats:
        """Counters since open and what the cache holds now."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            shared_misses=self._shared,
            corrupt_blocks=self._corrupt,
            evicted_blocks=self._evicted,
            unstored_blocks=self._unstored,
            blocks=len(self._entries),
            cached_bytes=self._cached_bytes,
        )

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[BlockKey]:
        """Stored keys, least recently used first."""
        return list(self._entries)

    @contextlib.asynccontextmanager
    async def pinned(self, keys: Iterable[BlockKey]) -> AsyncIterator[None]:
        """Keep ``keys`` from being evicted while the block runs."""
        held = list(keys)
        for key in held:
            self._pins[key] = self._pins.get(key, 0) + 1
        try:
            yield
        finally:
            for key in held:
                self._unpin(key)

    async def prune(self) -> int:
        """Evict least-recently-used unpinned blocks until the minimum free space is restored.

        :returns: the number of blocks evicted.
        """
        self._check_open()
        async with self._store_lock:
            before = self._evicted
            await self._make_room(0)
            return self._evicted - before

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f"cache {self.root} is closed")

    def _min_free(self, total_bytes: int) -> int:
        return math.ceil(total_bytes * self.min_free_percent / 100)

    def _unpin(self, key: BlockKey) -> None:
        count = self._pins[key] - 1
        if count:
            self._pins[key] = count
        else:
            del self._pins[key]

    def _block_path(self, key: BlockKey, entry: IndexEntry) -> str:
        source_dir = self._source_dirs.get(key.source)
        if source_dir is None:
            digest = hashlib.blake2b(key.source.encode(), digest_size=10).hexdigest()
            source_dir = self._source_dirs[key.source] = os.path.join(self._blocks_dir, digest)
        return os.path.join(source_dir, f"{key.index >> 12:x}", f"{key.index:x}-{entry.gen:x}")

    async def _read_entry(self, key: BlockKey, entry: IndexEntry) -> bytes | None:
        path = self._block_path(key, entry)
        self._pins[key] = self._pins.get(key, 0) + 1
        try:
            data = await run_read(_read_verified, path, entry.length, entry.crc)
        except OSError as exc:  # e.g. EIO from a failing cache disk: serve from the source
            log.warning("%s: cannot read cached block %s: %s", path, key, exc)
            data = None
        finally:
            self._unpin(key)
        if data is None:
            self._corrupt += 1
            log.warning("%s: cached block %s is missing or corrupt; fetching it again", path, key)
            if self._entries.get(key) is entry:
                self._forget(key)
                with contextlib.suppress(OSError):
                    await run_write(self._delete_sync, [(key, entry)])
            return None
        self._hits += 1
        if self._entries.get(key) is entry:
            self._verified[key] = entry.gen
            self._touch(key)
        return data

    def _touch(self, key: BlockKey) -> None:
        self._entries.move_to_end(key)
        self._used_seq += 1
        self._touched[key] = self._used_seq
        self._hot = None

    async def read_range(self, key: BlockKey, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` within a cached block, without reading the whole block.

        Only for a block whose file passed its CRC check (or was written) earlier in this
        process: the CRC catches a block file that did not reach the disk before a crash, which
        a block verified since the start cannot be. Returns None when the block is not cached,
        not verified yet, or the range is outside it (``lookup`` verifies, and makes a miss's
        caller the filler; this never does).

        The block file stays open for the next read (see the module docstring); a range the page
        cache holds is copied inline, anything else is read in a worker thread.
        """
        if self._closed:
            raise CacheError(f"cache {self.root} is closed")
        data = self._read_inline(key, offset, length)
        if data is not None:
            return data
        found = self._verified_fd(key)
        if found is None:
            return None
        fd, entry = found
        if offset < 0 or length <= 0 or offset + length > entry.length:
            return None
        data = await self._read_range_in_thread(key, entry, fd, offset, length)
        if data is None:
            return None
        self._hits += 1
        if self._entries.get(key) is entry:
            self._touch(key)
        return data

    def _read_inline(self, key: BlockKey, offset: int, length: int) -> bytes | None:
        """The hit path: the range of a verified block copied on the event loop, when the page
        cache holds all of it (``RWF_NOWAIT``); None when it cannot be served that way."""
        hot = self._hot
        newest = hot is not None and hot[0] is key
        if hot is not None and newest:
            _key, fd, entry = hot
        elif (found := self._verified_fd(key)) is not None:
            fd, entry = found
        else:
            return None
        if (
            fd < 0
            or not self._nowait
            or offset < 0
            or length <= 0
            or offset + length > entry.length
        ):
            return None
        # No await between taking ``fd`` and this read: nothing can close it meanwhile (nor
        # reuse the scratch buffer, which saves allocating and zeroing one per read).
        buf = self._scratch[:length]
        try:
            done = os.preadv(fd, (buf,), offset, _NOWAIT)
        except OSError as exc:  # EAGAIN: not all in the page cache
            if exc.errno == errno.EOPNOTSUPP:  # no RWF_NOWAIT on this filesystem
                self._nowait = False
            return None
        if done != length:
            return None
        self._hits += 1
        if not newest:
            self._touch(key)
            self._hot = (key, fd, entry)
        return bytes(buf)

    async def file_range(
        self, key: BlockKey, offset: int, length: int, *, eof: bool = False
    ) -> FileRange | None:
        """``length`` bytes at ``offset`` of a verified block as a range of its file, for the NFS
        server to splice to the socket without copying (see ``read_range`` for which blocks
        qualify; None otherwise). The range's descriptor is a duplicate the caller owns: it
        stays valid after the block is evicted, since a block file is never rewritten in place
        (each stored copy is a new file), only unlinked."""
        if self._closed:
            raise CacheError(f"cache {self.root} is closed")
        found = self._verified_fd(key)
        if found is None:
            return None
        fd, entry = found
        if fd < 0 or offset < 0 or length <= 0 or offset + length > entry.length:
            return None
        rng = FileRange(os.dup(fd), offset, length, eof)  # no await since taking ``fd``
        self._hits += 1
        self._touch(key)
        return rng

    async def _read_range_in_thread(
        self, key: BlockKey, entry: IndexEntry, fd: int, start: int, length: int
    ) -> bytes | None:
        """The slow half of ``read_range``. The worker reads a ``dup`` of the kept descriptor (or
        opens the file itself) and closes it: ``run_read`` abandons the thread when the caller
        is cancelled, so the thread must never use a descriptor the event loop may close."""
        path = self._block_path(key, entry)
        self._pins[key] = self._pins.get(key, 0) + 1
        data: bytes | None
        try:
            if fd >= 0:
                data = await run_read(_pread_and_close, os.dup(fd), start, length)
            else:
                data = await run_read(_read_part, path, start, length)
        except OSError as exc:
            log.warning("%s: cannot read cached block %s: %s", path, key, exc)
            data = None
        finally:
            self._unpin(key)
        if data is None or len(data) != length:
            if self._entries.get(key) is entry:  # lookup checks it again
                self._verified.pop(key, None)
                self._close_fd(key)
            return None
        return data

    def _verified_fd(self, key: BlockKey) -> tuple[int, IndexEntry] | None:
        """The kept descriptor (-1: cannot be opened) and entry of a block verified in this
        process, opening and keeping its file if needed; None when not cached or not verified."""
        kept = self._fds.get(key)
        if kept is not None:
            self._fds.move_to_end(key)
            return kept
        entry = self._entries.get(key)
        if entry is None or self._verified.get(key) != entry.gen:
            return None
        return self._keep_open(key, entry), entry

    def _keep_open(self, key: BlockKey, entry: IndexEntry) -> int:
        """Open the block's file and keep it among the LRU of open files; -1 when it cannot be
        opened (``read_range`` then reads by path in a thread, which reports what is wrong)."""
        try:
            fd = os.open(self._block_path(key, entry), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1
        fds = self._fds
        fds[key] = (fd, entry)
        while len(fds) > self._max_fds:
            self._hot = None
            _old_key, (old_fd, _old_entry) = fds.popitem(last=False)
            os.close(old_fd)
        return fd

    def _close_fd(self, key: BlockKey) -> None:
        kept = self._fds.pop(key, None)
        if kept is not None:
            self._hot = None
            os.close(kept[0])

    def _close_all_fds(self) -> None:
        fds, self._fds = self._fds, OrderedDict()
        self._hot = None
        for fd, _entry in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def max_open_files(self) -> int:
        """The bound on ``open_files``: the requested one, capped by the descriptor limit."""
        return self._max_fds

    @property
    def open_files(self) -> int:
        """Block files currently kept open for ``read_range``."""
        return len(self._fds)

    def _forget(self, key: BlockKey) -> IndexEntry:
        entry = self._entries.pop(key)
        self._verified.pop(key, None)
        self._close_fd(key)
        self._cached_bytes -= allocated_size(entry.length)
        self._touched.pop(key, None)
        return entry

    async def _store(self, key: BlockKey, data: bytes, *, cold: bool = False) -> None:
        async with self._store_lock:
            if self._closed or key in self._entries:
                return
            if not await self._make_room(allocated_size(len(data))):
                self._unstored += 1
                return
            entry = IndexEntry(gen=self._next_gen, length=len(data), crc=0)
            self._next_gen += 1
            self._used_seq += 1
            touched, self._touched = self._touched, {}
            try:
                entry = await run_write(self._write_sync, key, entry, data, self._used_seq, touched)
            except BaseException:
                self._touched = touched | self._touched
                raise
            self._entries[key] = entry
            if cold:  # the first to be evicted (its next hit moves it up)
                self._entries.move_to_end(key, last=False)
            self._hot = None  # ``key`` is the most recently used now
            self._verified[key] = entry.gen  # written from these very bytes, in this process
            self._cached_bytes += allocated_size(entry.length)

    def _write_sync(
        self, key: BlockKey, entry: IndexEntry, data: bytes, used: int, touched: dict[BlockKey, int]
    ) -> IndexEntry:
        entry = attrs.evolve(entry, crc=zlib.crc32(data))
        path = self._block_path(key, entry)
        directory = os.path.dirname(path)
        if directory not in self._made_dirs:
            parent = os.path.dirname(directory)
            for path_ in (parent, directory):  # makedirs' mode skips intermediate directories
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path_, 0o700)
            self._made_dirs.add(directory)
        # No fsync: a block that does not reach the disk fails its CRC and is fetched again.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            self._index.put(key, entry, used, touched)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return entry

    async def _make_room(self, incoming: int) -> bool:
        """Evict LRU unpinned blocks until storing ``incoming`` more bytes keeps the minimum free
        space; False when that is impossible. Called with the store lock held."""
        while True:
            usage = await run_read(self._probe.usage)
            deficit = self._min_free(usage.total_bytes) - (usage.free_bytes - incoming)
            if deficit <= 0:
                return True
            victims: list[tuple[BlockKey, IndexEntry]] = []
            freed = 0
            for key, entry in self._entries.items():
                if freed >= deficit:
                    break
                if key in self._pins:
                    continue
                victims.append((key, entry))
                freed += allocated_size(entry.length)
            if not victims:
                return False
            for key, _entry in victims:
                self._forget(key)
            self._evicted += len(victims)
            await run_write(self._delete_sync, victims)

    def _delete_sync(self, victims: list[tuple[BlockKey, IndexEntry]]) -> None:
        self._index.delete(victims)
        for key, entry in victims:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._block_path(key, entry))
