"""The File Recovery Enabler's read path, side by side with its peers, in one run.

1. Cache-hit reads through the virtual datastore (``VirtualDatastore.read`` of a ``-flat.vmdk``,
   every block already in the on-disk cache) vs ``os.pread`` of the same bytes from a raw file,
   in 1 MiB reads (whole cache blocks) and in 64 KiB reads (parts of a block, what an NFS client
   with a 64 KiB rsize asks for).
2. Cold reads through the virtual datastore (every block's first read: from the backup, read
   ahead once the reads are seen to be sequential) vs the catalog's VMDK reader alone on the
   same monolithicSparse disk, both 1 MiB reads one at a time. The cache-hit reads of (1) run
   after the background restore's ``restore_block`` (on a second disk of the same source) has
   made sure every block is in the cache (a pass the read-ahead streamed hands its blocks to
   the cache after their readers, off the READ's path).
3. Power-on: the boot working set (first 4 MiB + 32 scattered 64 KiB reads) of a 1 GiB and of a
   1 TiB sparse disk holding the same data: time and backup bytes (ratio 1 TiB / 1 GiB). The
   time of ``FlatDisk.open`` (which reads the disk's allocation map) is reported apart, and
   with the reads as ``with_open_seconds``.

Run: ``.venv/bin/python benchmarks/datastore.py``; the last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from liverecovery.backends import DiskInfo, RestorePoint
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.config import MiB
from liverecovery.datastore.flatdisk import FlatDisk
from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.testing.samples import expected_read, sample_vm

SIZE = 256 * MiB
CHUNK = 1 * MiB
SMALL = 64 * 1024


async def open_disk(root: Path, name: str, size: int) -> tuple[Any, RestorePoint, DiskInfo, Any]:
    vm = sample_vm(name, disk_sizes=(size,), head=SIZE)
    vm.write(root)
    catalog = DirectoryCatalog(root)
    point = await catalog.restore_point(name)
    return catalog, point, point.disks[0], vm


async def read_all(read: Any, size: int, chunk: int = CHUNK) -> float:
    start = time.perf_counter()
    for offset in range(0, size, chunk):
        await read(offset, chunk)
    return size / (time.perf_counter() - start) / MiB


def pread_all(path: Path, size: int, chunk: int = CHUNK) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for offset in range(0, size, chunk):
            os.pread(fd, chunk, offset)
        return size / (time.perf_counter() - start) / MiB
    finally:
        os.close(fd)


async def hit_and_cold(work: Path) -> dict[str, float]:
    catalog, point, disk, vm = await open_disk(work / "backup", "bench", SIZE)
    raw = work / "raw.img"
    with open(raw, "wb") as f:
        f.write(expected_read(SIZE, vm.disks[0][1], 0, SIZE))
    keys = ("hit", "pread", "hit_64k", "pread_64k", "cold", "reader")
    results: dict[str, list[float]] = {k: [] for k in keys}
    for round_ in range(3):
        cache = await DiskBlockCache.open(work / f"cache{round_}", block_size=CHUNK)
        reader = await catalog.open_disk(point, disk)
        flat = await FlatDisk.open(source=f"bench/{round_}", reader=reader, cache=cache)
        ds = VirtualDatastore(MemoryFilesystem(), {"bench-flat.vmdk": flat})
        fid = await ds.lookup(ds.root_id, "bench-flat.vmdk")

        async def via_datastore(
            offset: int, length: int, ds: VirtualDatastore = ds, fid: int = fid
        ) -> bytes:
            return (await ds.read(fid, offset, length))[0]

        results["cold"].append(await read_all(via_datastore, SIZE))
        # Make sure every block is cached, as the background restore does (through another
        # disk of the same source, whose read-ahead is idle).
        warm_reader = await catalog.open_disk(point, disk)
        warm = await FlatDisk.open(source=f"bench/{round_}", reader=warm_reader, cache=cache)
        for index in range(SIZE // CHUNK):
            await warm.restore_block(index)
        await warm.aclose()
        results["hit"].append(await read_all(via_datastore, SIZE))
        results["hit_64k"].append(await read_all(via_datastore, SIZE, SMALL))
        results["pread_64k"].append(pread_all(raw, SIZE, SMALL))
        direct = await catalog.open_disk(point, disk)
        results["reader"].append(await read_all(direct.read, SIZE))
        await direct.aclose()
        results["pread"].append(pread_all(raw, SIZE))
        await ds.aclose()
        await cache.aclose()
    await catalog.aclose()
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "hit_mib_s": med["hit"],
        "pread_mib_s": med["pread"],
        "hit_ratio": med["hit"] / med["pread"],
        "hit_64k_mib_s": med["hit_64k"],
        "pread_64k_mib_s": med["pread_64k"],
        "hit_64k_ratio": med["hit_64k"] / med["pread_64k"],
        "cold_mib_s": med["cold"],
        "reader_mib_s": med["reader"],
        "cold_ratio": med["cold"] / med["reader"],
    }


async def power_on(work: Path, size: int) -> dict[str, float]:
    catalog, point, disk, _vm = await open_disk(work / f"p{size}", "boot", size)
    cache = await DiskBlockCache.open(work / f"pcache{size}", block_size=CHUNK)
    reader = await catalog.open_disk(point, disk)
    counted = {"bytes": 0}
    real_read = reader.read

    async def counting_read(offset: int, length: int) -> bytes:
        data: bytes = await real_read(offset, length)
        counted["bytes"] += len(data)
        return data

    reader.read = counting_read
    opened = time.perf_counter()
    flat = await FlatDisk.open(source=f"boot/{size}", reader=reader, cache=cache)
    open_seconds = time.perf_counter() - opened
    rng = random.Random(7)
    offsets = list(range(0, 4 * MiB, 64 * 1024))
    offsets += [rng.randrange(size // (64 * 1024)) * 64 * 1024 for _ in range(32)]
    start = time.perf_counter()
    for offset in offsets:
        await flat.read(offset, 64 * 1024)
    elapsed = time.perf_counter() - start
    await flat.aclose()
    await cache.aclose()
    await catalog.aclose()
    return {
        "seconds": elapsed,
        "open_seconds": open_seconds,
        "with_open_seconds": open_seconds + elapsed,
        "backup_bytes": counted["bytes"],
    }


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = await hit_and_cold(work)
        small = await power_on(work, 1 << 30)
        huge = await power_on(work, 1 << 40)
    result = {
        "benchmark": "datastore",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        **paths,
        "power_on_1GiB": small,
        "power_on_1TiB": huge,
        "power_on_time_ratio": huge["seconds"] / small["seconds"],
        "power_on_with_open_time_ratio": huge["with_open_seconds"] / small["with_open_seconds"],
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "power_on_bytes_ratio": huge["backup_bytes"] / max(small["backup_bytes"], 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    anyio.run(main)
