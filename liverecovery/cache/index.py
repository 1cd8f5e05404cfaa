"""The block cache's persistent index: which blocks are stored, their checksums, LRU order, and
the jobs' space reservations.

Why sqlite3 (stdlib) rather than an append-only log: the index needs updates and deletes (every
eviction, every reservation change) as well as inserts, and a log would need its own compaction
and torn-tail recovery; sqlite gives atomic transactions and crash recovery for free.

Durability is tuned for a cache: WAL journal with ``synchronous=NORMAL``, so a commit costs no
fsync and a power loss may forget the last few entries (harmless: the block is fetched again) but
never leaves a half-written one. Wrong data is prevented elsewhere: every entry carries the block's
length and CRC-32, checked on every read, so an entry whose block file did not reach the disk (or
rotted since) is discarded, never served. Last-use order is flushed in batches (with the next insert
or at close); losing it only makes eviction slightly less accurate. Reservation changes are the
exception: they are written with ``synchronous=FULL``, since a lost release would hold space.

Not thread-safe by itself: the cache calls it from worker threads under its own lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from liverecovery.backends import BlockKey
from liverecovery.errors import CacheError

__all__ = ["BlockIndex", "IndexEntry", "LoadedIndex"]

FORMAT_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    source TEXT NOT NULL, idx INTEGER NOT NULL, gen INTEGER NOT NULL,
    length INTEGER NOT NULL, crc INTEGER NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (source, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (job_id TEXT PRIMARY KEY, nbytes INTEGER NOT NULL);
"""


@attrs.frozen
class IndexEntry:
    """One stored block: ``gen`` makes its file name unique, ``crc`` is zlib.crc32 of its bytes."""

    gen: int
    length: int
    crc: int


@attrs.frozen
class LoadedIndex:
    """What the index held at open: entries oldest-used first, reservations, counters to resume."""

    entries: list[tuple[BlockKey, IndexEntry]]
    reservations: dict[str, int]
    next_gen: int
    last_used: int
    wiped: bool


class BlockIndex:
    """The sqlite3 index file (created owner-only). Use ``BlockIndex.open``."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, block_size: int) -> tuple[BlockIndex, LoadedIndex]:
        """Open or create the index. An unreadable index, or one written for another block size or
        format, is discarded (it is only a cache): ``LoadedIndex.wiped`` says so.

        :raises CacheError: the index file cannot be created at all.
        """
        try:
            conn = cls._connect(path)
        except sqlite3.DatabaseError:
            conn = None
        loaded = cls._try_load(conn, block_size) if conn is not None else None
        wiped = loaded is None
        if conn is None or loaded is None:
            if conn is not None:
                conn.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
            try:
                conn = cls._connect(path)
                loaded = cls._load(conn, block_size)
            except sqlite3.DatabaseError as exc:
                raise CacheError(f"{path}: cannot create the cache index: {exc}") from exc
            if loaded is None:
                raise CacheError(f"{path}: a new cache index has unexpected metadata")
        return cls(path, conn), attrs.evolve(loaded, wiped=wiped)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # Create the file owner-only first: sqlite gives its -wal/-shm files the same mode.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return conn

    @classmethod
    def _try_load(cls, conn: sqlite3.Connection, block_size: int) -> LoadedIndex | None:
        try:
            return cls._load(conn, block_size)
        except sqlite3.DatabaseError:
            return None

    @staticmethod
    def _load(conn: sqlite3.Connection, block_size: int) -> LoadedIndex | None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("format", FORMAT_VERSION), ("block_size", str(block_size))],
            )
            conn.execute("COMMIT")
        elif meta.get("format") != FORMAT_VERSION or meta.get("block_size") != str(block_size):
            return None
        entries = [
            (BlockKey(source, idx), IndexEntry(gen, length, crc))
            for source, idx, gen, length, crc in conn.execute(
                "SELECT source, idx, gen, length, crc FROM blocks ORDER BY used, gen"
            )
        ]
        reservations = dict(conn.execute("SELECT job_id, nbytes FROM reservations").fetchall())
        max_gen, max_used = conn.execute("SELECT MAX(gen), MAX(used) FROM blocks").fetchone()
        return LoadedIndex(
            entries=entries,
            reservations=reservations,
            next_gen=(max_gen or 0) + 1,
            last_used=max_used or 0,
            wiped=False,
        )

    def put(
        self, key: BlockKey, entry: IndexEntry, used: int, touched: Mapping[BlockKey, int]
    ) -> None:
        """Record a stored block, together with the pending last-use updates."""
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.execute(
                "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
                (key.source, key.index, entry.gen, entry.length, entry.crc, used),
            )
            self._touch(touched)
            self._conn.execute("COMMIT")

    def touch(self, touched: Mapping[BlockKey, int]) -> None:
        """Write last-use sequence numbers of blocks that were read."""
        with self._lock:
            self._conn.execute("BEGIN")
            self._touch(touched)
            self._conn.execute("COMMIT")

    def _touch(self, touched: Mapping[BlockKey, int]) -> None:
        self._conn.executemany(
            "UPDATE blocks SET used = ? WHERE source = ? AND idx = ?",
            [(used, k.source, k.index) for k, used in touched.items()],
        )

    def delete(self, items: Iterable[tuple[BlockKey, IndexEntry]]) -> None:
        """Forget blocks (only the generation given, so a newer copy of the key survives)."""
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "DELETE FROM blocks WHERE source = ? AND idx = ? AND gen = ?",
                [(k.source, k.index, e.gen) for k, e in items],
            )
            self._conn.execute("COMMIT")

    def set_reservation(self, job_id: str, nbytes: int | None) -> None:
        """Store (or with ``None`` remove) a job's reservation, durably (fsync'ed): unlike a cache
        entry, a forgotten release would hold space forever. Reservations change rarely."""
        with self._lock:
            self._conn.execute("PRAGMA synchronous=FULL")
            try:
                if nbytes is None:
                    self._conn.execute("DELETE FROM reservations WHERE job_id = ?", (job_id,))
                else:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO reservations VALUES (?, ?)", (job_id, nbytes)
                    )
            finally:
                self._conn.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
