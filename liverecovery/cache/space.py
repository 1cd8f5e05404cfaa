"""How much room the cache's filesystem has: a small probe protocol, the real one and a test one.

The cache never asks the filesystem directly; it asks a ``SpaceProbe``. Production uses
``StatvfsProbe`` (``os.statvfs``); tests use ``CapacityProbe``, which pretends the filesystem has a
settable capacity and counts the bytes really stored under the cache root, so eviction can be
exercised deterministically without a loop device. Probes are synchronous and cheap: the cache
calls them from a worker thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["CapacityProbe", "FsUsage", "SpaceProbe", "StatvfsProbe", "allocated_size"]

_ALLOCATION_UNIT = 4096


def allocated_size(nbytes: int) -> int:
    """Bytes a file of ``nbytes`` occupies on a typical filesystem (rounded up to 4 KiB)."""
    return -(-nbytes // _ALLOCATION_UNIT) * _ALLOCATION_UNIT


@attrs.frozen
class FsUsage:
    """Size and free space (available to unprivileged writers) of one filesystem, in bytes."""

    total_bytes: int
    free_bytes: int


@runtime_checkable
class SpaceProbe(Protocol):
    """**Protocol:** reports the usage of the filesystem holding the cache (called in a thread)."""

    def usage(self) -> FsUsage: ...


@attrs.frozen
class StatvfsProbe:
    """The real probe: ``os.statvfs`` of ``path`` (``f_bavail``, what non-root writers may use)."""

    path: Path

    def usage(self) -> FsUsage:
        st = os.statvfs(self.path)
        return FsUsage(total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize)


@attrs.define
class CapacityProbe:
    """A stand-in filesystem of ``capacity_bytes`` holding ``other_used_bytes`` of foreign data
    plus whatever is really stored under ``root`` (each file rounded up to 4 KiB).

    Both numbers are settable while the cache runs, to simulate a filling or growing disk. Point
    ``root`` at ``<cache root>/blocks`` to count only block files (the sqlite index and its WAL
    would otherwise dominate a test-sized capacity).
    """

    root: Path
    capacity_bytes: int
    other_used_bytes: int = 0

    def used_bytes(self) -> int:
        """Bytes the files under ``root`` occupy (a full walk; meant for small test caches)."""
        total = 0
        stack = [self.root]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        total += allocated_size(entry.stat(follow_symlinks=False).st_size)
                except FileNotFoundError:
                    continue
        return total

    def usage(self) -> FsUsage:
        free = self.capacity_bytes - self.other_used_bytes - self.used_bytes()
        return FsUsage(total_bytes=self.capacity_bytes, free_bytes=max(0, free))
