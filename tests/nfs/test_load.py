"""Load: 64 concurrent NFS clients doing mixed reads, writes and GETATTRs against one server.

Zero errors, and after they disconnect no file descriptors or memory are left behind (measured
over two identical rounds, so warm-up allocations do not count as growth).
"""

from __future__ import annotations

import os
import random
import resource
from pathlib import Path

import anyio
import pytest

from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import SetAttributes, Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

CLIENTS = 64
SECONDS = 2.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def one_client(port: int, index: int, errors: list[BaseException]) -> int:
    ops = 0
    rng = random.Random(index)
    try:
        async with await NfsClient.connect("127.0.0.1", port, call_timeout=60) as client:
            root = await client.mount("/load")
            fh, _ = await client.create(root, f"c{index}", SetAttributes(mode=0o600))
            expected = bytearray()
            deadline = anyio.current_time() + SECONDS
            while anyio.current_time() < deadline:
                choice = rng.random()
                if choice < 0.4:
                    block = bytes([index % 256]) * rng.choice((512, 4096, 65536))
                    stable = rng.choice((Stability.FILE_SYNC, Stability.UNSTABLE))
                    await client.write(fh, len(expected), block, stable)
                    expected += block
                    if stable is Stability.UNSTABLE and rng.random() < 0.5:
                        await client.commit(fh)
                elif choice < 0.8 and expected:
                    offset = rng.randrange(len(expected))
                    data, _ = await client.read(fh, offset, 65536)
                    assert data == bytes(expected[offset : offset + 65536])
                else:
                    assert (await client.getattr(fh)).size == len(expected)
                ops += 1
            await client.remove(root, f"c{index}")
            await client.umount("/load")
    except BaseException as exc:  # counted, not raised: the assertion is on the count
        errors.append(exc)
    return ops


async def round_of_clients(port: int) -> tuple[int, list[BaseException]]:
    errors: list[BaseException] = []
    totals: list[int] = []

    async def run(i: int) -> None:
        totals.append(await one_client(port, i, errors))

    async with anyio.create_task_group() as tg:
        for i in range(CLIENTS):
            tg.start_soon(run, i)
    return sum(totals), errors


async def test_64_clients_mixed_io_no_errors_no_leaks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # All clients share one address: room for them and for closes not yet processed.
    async with NfsServer(
        tmp_path / "state", host="127.0.0.1", max_connections_per_address=2 * CLIENTS
    ) as server:
        fs = LocalFilesystem(data)
        await server.export_filesystem("/load", fs, ["127.0.0.1"])
        ops1, errors1 = await round_of_clients(server.port)
        assert errors1 == [] and ops1 > CLIENTS
        await anyio.sleep(0.2)
        fds_after_first = open_fds()
        rss_after_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert not any(data.iterdir())
        ops2, errors2 = await round_of_clients(server.port)
        assert errors2 == [] and ops2 > CLIENTS
        await anyio.sleep(0.2)
        assert open_fds() <= fds_after_first + 2
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_after_first
        assert grown_kib < 64 * 1024, f"peak RSS grew {grown_kib} KiB in the second round"
        await fs.aclose()
