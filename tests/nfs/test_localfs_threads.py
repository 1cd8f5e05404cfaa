"""LocalFilesystem's worker threads never use a descriptor the event loop may close.

The filesystem keeps an LRU of open files. A read or write that goes to a worker thread used to
take the kept descriptor's number: if the LRU closed it meanwhile and another file got that
number, the thread read, wrote or fsynced the wrong file. Here a thread is held at its start
while the loop evicts the descriptor and opens another file, which takes the freed number.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from liverecovery.nfs import localfs
from liverecovery.nfs.filesystem import Stability
from liverecovery.nfs.localfs import LocalFilesystem

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class HeldThreads:
    """Wraps a LocalFilesystem I/O function so its worker thread waits for ``release``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.started = threading.Event()
        self.go = threading.Event()

    def __call__(self, *args: Any) -> Any:
        self.started.set()
        assert self.go.wait(30), "never released"
        return self.fn(*args)


async def evict_and_reuse(
    fs: LocalFilesystem, root: Path, victim: int, victim_fd: int
) -> list[int]:
    """Read other files until the victim's descriptor is evicted, then make sure some other
    file holds its number: one of those the filesystem opened, or a bystander opened here.
    Returns the bystanders' descriptors (to close)."""
    for i in range(3):
        await fs.read(await fs.lookup(fs.root_id, f"other{i}"), 0, 1)
    assert victim not in fs._fds  # evicted: its descriptor was closed
    opened: list[int] = []
    for i in range(64):
        try:
            os.fstat(victim_fd)
            return opened  # the number is taken by another file now
        except OSError:
            pass
        path = root.parent / f"bystander{i}"
        path.write_bytes(b"B" * 4096)
        opened.append(os.open(path, os.O_RDWR))
    pytest.fail("the evicted descriptor number was not reused")


def others_untouched(root: Path) -> bool:
    return all((root / f"other{i}").read_bytes() == b"o" for i in range(3)) and all(
        p.read_bytes() == b"B" * 4096 for p in root.parent.glob("bystander*")
    )


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalFilesystem, Path]:
    monkeypatch.setattr(localfs, "_MAX_OPEN", 2)
    root = tmp_path / "export"
    root.mkdir()
    (root / "target").write_bytes(b"T" * (2 << 20))
    for i in range(3):
        (root / f"other{i}").write_bytes(b"o")
    return LocalFilesystem(root), root


async def while_held(
    fs: LocalFilesystem,
    root: Path,
    held: HeldThreads,
    target: int,
    op: Callable[[], Awaitable[object]],
) -> object:
    """Run ``op`` (whose worker thread ``held`` stops at its start), evict the target's kept
    descriptor and get its number reused meanwhile, then let the thread go. ``op``'s result."""
    victim_fd = fs._fd(target)
    result: list[object] = []

    async def run() -> None:
        result.append(await op())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await anyio.to_thread.run_sync(held.started.wait)
            bystanders = await evict_and_reuse(fs, root, target, victim_fd)
            held.go.set()
        for fd in bystanders:
            os.close(fd)
    return result[0]


async def test_a_thread_read_is_not_redirected_to_a_file_that_reused_the_number(
    tree: tuple[LocalFilesystem, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, root = tree
    held = HeldThreads(LocalFilesystem._read)
    monkeypatch.setattr(LocalFilesystem, "_read", staticmethod(held))
    target = await fs.lookup(fs.root_id, "target")
    result = await while_held(
        fs,
        root,
        held,
        target,
        lambda: fs.read(target, 0, 2 << 20),  # > inline: a thread
    )
    assert isinstance(result, tuple)
    data, _eof = result
    assert data == b"T" * (2 << 20)


async def test_a_thread_write_never_lands_in_a_file_that_reused_the_number(
    tree: tuple[LocalFilesystem, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, root = tree
    held = HeldThreads(LocalFilesystem._write)
    monkeypatch.setattr(LocalFilesystem, "_write", staticmethod(held))
    target = await fs.lookup(fs.root_id, "target")
    await while_held(
        fs, root, held, target, lambda: fs.write(target, 0, b"W" * 4096, Stability.FILE_SYNC)
    )
    assert others_untouched(root)
    assert (root / "target").read_bytes()[:4096] == b"W" * 4096  # the write reached its file
