"""Cache-hit read throughput of DiskBlockCache vs os.pread of the same bytes, in one run.

Both read the same data from the page cache (warm): the cache's 1 MiB block files vs one flat
file. Figures: sequential hits (one reader), concurrent hits (4 readers), plain os.pread in a loop,
and os.pread through anyio.to_thread (the thread hop a hit the page cache misses pays).
Hits are lookups of blocks filled in this run (verified: no CRC per hit). The last line is JSON.

    python benchmarks/cache.py [--mib 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_thread

from liverecovery.backends import BlockKey
from liverecovery.cache import DiskBlockCache

BLOCK = 1 << 20


async def main(mib: int, rounds: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="bench-cache-", dir="/var/tmp") as tmp:
        flat = Path(tmp) / "flat.bin"
        blocks = [os.urandom(BLOCK) for _ in range(mib)]
        flat.write_bytes(b"".join(blocks))
        cache = await DiskBlockCache.open(Path(tmp) / "cache", block_size=BLOCK, min_free_percent=0)
        keys = [BlockKey("bench", i) for i in range(mib)]
        for key, data in zip(keys, blocks, strict=True):
            assert await cache.lookup(key, 0, BLOCK) is None
            await cache.fill(key, data)

        async def hit(key: BlockKey) -> None:
            if await cache.lookup(key, 0, BLOCK) is None:
                raise AssertionError("benchmark expected a hit")

        total = mib * BLOCK * rounds

        # warm both paths once
        for key in keys:
            await hit(key)
        fd = os.open(flat, os.O_RDONLY)
        for i in range(mib):
            os.pread(fd, BLOCK, i * BLOCK)

        start = time.perf_counter()
        for _ in range(rounds):
            for key in keys:
                await hit(key)
        hit_s = time.perf_counter() - start

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for r in range(4):

                async def reader(r: int = r) -> None:
                    for _ in range(rounds):
                        for key in keys[r::4]:
                            await hit(key)

                tg.start_soon(reader)
        hit4_s = time.perf_counter() - start

        start = time.perf_counter()
        for _ in range(rounds):
            for i in range(mib):
                os.pread(fd, BLOCK, i * BLOCK)
        pread_s = time.perf_counter() - start

        start = time.perf_counter()
        for _ in range(rounds):
            for i in range(mib):
                await anyio.to_thread.run_sync(os.pread, fd, BLOCK, i * BLOCK)
        pread_thread_s = time.perf_counter() - start
        os.close(fd)
        await cache.aclose()

    def mibps(seconds: float) -> float:
        return round(total / seconds / BLOCK, 1)

    return {
        "block_size": BLOCK,
        "bytes_read": total,
        "cache_hit_MiBps": mibps(hit_s),
        "cache_hit_4_readers_MiBps": mibps(hit4_s),
        "pread_MiBps": mibps(pread_s),
        "pread_to_thread_MiBps": mibps(pread_thread_s),
        "ratio_hit_vs_pread": round(pread_s / hit_s, 3),
        "ratio_hit_4_readers_vs_pread": round(pread_s / hit4_s, 3),
        "ratio_hit_vs_pread_to_thread": round(pread_thread_s / hit_s, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of data (1 MiB blocks)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the data")
    args = parser.parse_args()
    result = anyio.run(main, args.mib, args.rounds)
    for name, value in result.items():
        print(f"{name:32} {value}")
    print(json.dumps(result))
