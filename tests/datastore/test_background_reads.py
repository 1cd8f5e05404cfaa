"""Foreground reads overtake queued background reads (a storage vMotion's read-ahead) in the
read threads: a running VM's READ never waits behind a copy's stream of backup fetches."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import pytest

from liverecovery.io import threads
from liverecovery.io.threads import background_reads, run_read, submit_read

pytestmark = pytest.mark.anyio


async def test_foreground_reads_run_before_queued_background_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a pool of its own: threads other tests abandoned (a READ left behind) cannot skew it
    max_threads = 4
    monkeypatch.setattr(threads, "_READS", threads._Pool(max_threads=max_threads))
    started = threading.Semaphore(0)
    gates = [threading.Event() for _ in range(max_threads)]
    order: list[str] = []

    def block(gate: threading.Event) -> None:
        started.release()
        gate.wait(30)

    def record(name: str) -> str:
        order.append(name)
        return name

    # every read thread busy, so the reads below queue
    blockers = [submit_read(block, gate) for gate in gates]
    for _ in range(max_threads):
        assert await anyio.to_thread.run_sync(started.acquire, True, 30)
    try:
        with background_reads():
            background = [submit_read(record, f"b{i}") for i in range(5)]
        foreground = [submit_read(record, f"f{i}") for i in range(5)]
        gates[0].set()  # one thread free: it takes the queued reads one at a time
        with anyio.fail_after(30):
            assert await asyncio.gather(*foreground) == [f"f{i}" for i in range(5)]
            assert await asyncio.gather(*background) == [f"b{i}" for i in range(5)]
        assert order == [f"f{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    finally:
        for gate in gates:
            gate.set()
        with anyio.fail_after(30):
            await asyncio.gather(*blockers)


async def test_background_is_scoped_and_inherited_by_tasks() -> None:
    seen: list[bool] = []

    def probe() -> None:
        seen.append(threads._BACKGROUND.get())

    async def child() -> None:
        probe()

    with background_reads():
        probe()
        task = asyncio.get_running_loop().create_task(child())
        await task
    probe()
    assert seen == [True, True, False]


async def test_background_reads_alone_still_run() -> None:
    with background_reads():
        with anyio.fail_after(30):
            results = await asyncio.gather(*(run_read(time.sleep, 0) for _ in range(50)))
    assert results == [None] * 50
