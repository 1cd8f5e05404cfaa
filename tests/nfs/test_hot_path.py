"""The NFS hot path's shortcuts keep their guarantees: cached handles, inline writes, hand-offs."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.io.threads import InlineWrites, run_read, run_write
from liverecovery.nfs.handles import HandleCodec

pytestmark = pytest.mark.anyio


def test_verified_handle_cache_never_admits_a_forgery() -> None:
    codec = HandleCodec(b"k" * 32)
    fh = codec.encode(1, 2, 3)
    assert codec.decode(fh).fileid == 3
    assert codec.decode(fh).fileid == 3  # from the cache now
    for i in range(len(fh)):
        forged = bytearray(fh)
        forged[i] ^= 0x01
        with pytest.raises(NfsError) as err:
            codec.decode(bytes(forged))
        assert err.value.status == NfsStatus.BADHANDLE
        with pytest.raises(NfsError):  # still refused: a refusal is never remembered
            codec.decode(bytes(forged))
    other = HandleCodec(b"x" * 32)
    with pytest.raises(NfsError):
        other.decode(fh)  # another key (another server's state dir) does not share the cache


def test_verified_handle_cache_is_bounded() -> None:
    codec = HandleCodec(b"k" * 32)
    handles = [codec.encode(1, 1, i) for i in range(10_000)]
    for i, fh in enumerate(handles):
        assert codec.decode(fh).fileid == i
    assert len(codec._verified) <= 4096
    assert codec.decode(handles[0]).fileid == 0


def test_inline_writes_back_off_after_a_slow_one() -> None:
    inline = InlineWrites(1024, slow_s=0.005, backoff_s=60.0)
    assert inline.allowed(1024)
    assert not inline.allowed(1025)
    assert inline.run(lambda x: x + 1, 1) == 2
    assert inline.allowed(10)  # fast: still inline
    inline.run(time.sleep, 0.02)
    assert not inline.allowed(10)  # slow: worker threads for the back-off period


def test_inline_writes_back_off_also_when_the_slow_write_fails() -> None:
    inline = InlineWrites(1024, slow_s=0.005, backoff_s=60.0)

    def slow_failure() -> None:
        time.sleep(0.02)
        raise OSError("ENOSPC")

    with pytest.raises(OSError):
        inline.run(slow_failure)
    assert not inline.allowed(1)


async def test_run_read_and_run_write_return_results_and_raise_errors() -> None:
    assert await run_read(lambda a, b: a * b, 6, 7) == 42
    assert await run_write(lambda: threading.current_thread().name) != (
        threading.current_thread().name
    )

    def fail() -> None:
        raise OSError(5, "boom")

    with pytest.raises(OSError, match="boom"):
        await run_read(fail)
    with pytest.raises(OSError, match="boom"):
        await run_write(fail)
    results = []

    async def one(i: int) -> None:
        results.append(await run_read(lambda: (time.sleep(0.01), i)[1]))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    assert sorted(results) == list(range(40))


async def test_run_write_finishes_the_write_before_a_cancelled_caller_moves_on() -> None:
    done = threading.Event()

    def slow_write() -> str:
        time.sleep(0.2)
        done.set()
        return "written"

    with anyio.fail_after(10):
        with anyio.move_on_after(0.01):
            await run_write(slow_write)
        assert done.is_set()  # the caller did not leave while the write was still running
