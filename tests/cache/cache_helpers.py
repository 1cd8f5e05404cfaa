"""Shared helpers for the block cache tests: deterministic block contents and counting fetchers."""

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

from liverecovery.backends import BlockKey


def block_bytes(key: BlockKey, length: int) -> bytes:
    """Deterministic, key-specific contents standing in for the backup's bytes."""
    seed = hashlib.sha256(f"{key.source}/{key.index}".encode()).digest()
    return (seed * (length // len(seed) + 1))[:length]


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
