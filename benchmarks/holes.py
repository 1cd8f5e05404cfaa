"""READs of holes through the server: a virtual flat disk without data vs a local sparse file.

Both are served by our NFS server on loopback and read end to end by our client with
``--depth`` READs of 1 MiB in flight (the storage vMotion pattern), in one process. The flat
disk answers from the hole map (no cache, no backup); the local file is a sparse file the
server splices from the page cache. Reported: MiB/s and process CPU per READ (client and server
together, as in ``end_to_end.py``), median of ``--rounds``, interleaved.

Run: ``.venv/bin/python benchmarks/holes.py``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.config import GiB, MiB
from liverecovery.datastore.flatdisk import FlatDisk
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from liverecovery.testing import MemoryDisk


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _read_all(client: NfsClient, fh: bytes, size: int, depth: int) -> tuple[float, float]:
    offsets = iter(range(0, size, MiB))

    async def worker() -> None:
        for offset in offsets:
            data, _eof = await client.read(fh, offset, MiB)
            assert len(data) == MiB

    cpu, start = _cpu(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(depth):
            tg.start_soon(worker)
    return time.perf_counter() - start, _cpu() - cpu


async def run(size: int, depth: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "folder").mkdir()
        with open(work / "folder" / "sparse.img", "wb") as f:
            f.truncate(size)
        cache = await DiskBlockCache.open(work / "cache", block_size=MiB)
        flat = await FlatDisk.open(source="holes/0", reader=MemoryDisk(size), cache=cache)
        datastore = VirtualDatastore(LocalFilesystem(work / "folder"), {"vm-flat.vmdk": flat})
        out: dict[str, list[tuple[float, float]]] = {"flat_disk": [], "local_sparse": []}
        async with NfsServer(work / "state") as server:
            await server.export("/lr/esx", ["127.0.0.1"])
            await server.publish("/lr/esx", "vm", datastore)
            async with await NfsClient.connect(
                "127.0.0.1", server.port, mount_port=server.port, call_timeout=60
            ) as client:
                root = await client.mount("/lr/esx")
                handles = {
                    "flat_disk": await client.lookup_path(root, "vm/vm-flat.vmdk"),
                    "local_sparse": await client.lookup_path(root, "vm/sparse.img"),
                }
                await _read_all(client, handles["local_sparse"], size, depth)  # warm
                for _ in range(rounds):
                    for name, fh in handles.items():
                        out[name].append(await _read_all(client, fh, size, depth))
        await flat.aclose()
        await cache.aclose()
    reads = size // MiB
    result: dict[str, Any] = {}
    for name, runs in out.items():
        result[name] = {
            "mib_s": statistics.median(size / MiB / wall for wall, _ in runs),
            "cpu_us_per_read": statistics.median(cpu / reads * 1e6 for _, cpu in runs),
        }
    result["ratio_mib_s"] = result["flat_disk"]["mib_s"] / result["local_sparse"]["mib_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=int, default=2)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    result = anyio.run(run, args.size_gib * GiB, args.depth, args.rounds)
    print(
        json.dumps(
            {
                "benchmark": "holes",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                "size_gib": args.size_gib,
                "depth": args.depth,
                "loadavg_start": load,
                "loadavg_end": os.getloadavg()[0],
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
