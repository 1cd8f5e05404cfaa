"""Shared helpers for the block cache tests: deterministic block contents, counting fetchers, and
``read_through`` (a cache-then-backup read as ``FlatDisk`` does it)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from liverecovery.backends import BlockCache, BlockKey


def block_bytes(key: BlockKey, length: int) -> bytes:
    """Deterministic, key-specific contents standing in for the backup's bytes."""
    seed = hashlib.sha256(f"{key.source}/{key.index}".encode()).digest()
    return (seed * (length // len(seed) + 1))[:length]


async def read_through(
    cache: BlockCache, key: BlockKey, fetch: Callable[[], Awaitable[bytes]]
) -> bytes:
    """The whole block from the cache or, on a miss, from ``fetch`` (then filled), the way
    ``FlatDisk`` reads: one lookup; its filler fetches; concurrent lookups wait for the fill."""
    data = await cache.lookup(key, 0, cache.block_size)
    if data is not None:
        return data
    try:
        data = await fetch()
    except BaseException as exc:
        cache.abandon(key, exc if isinstance(exc, Exception) else None)
        raise
    await cache.fill(key, data)
    return data


class CountingSource:
    """A "backup" whose fetches are counted per key; ``length(key)`` decides each block's size."""

    def __init__(self, length: Callable[[BlockKey], int]) -> None:
        self.length = length
        self.fetches: Counter[BlockKey] = Counter()

    def fetcher(self, key: BlockKey) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            self.fetches[key] += 1
            return block_bytes(key, self.length(key))

        return fetch


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (skips the test where mounting is not permitted)."""
    mountpoint = Path(tempfile.mkdtemp(prefix="cache-tmpfs-"))
    try:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        mountpoint.rmdir()
