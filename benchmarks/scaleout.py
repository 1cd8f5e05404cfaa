"""What several serving nodes cost per operation, against the real store (Ceph RGW on loopback).

1. A stable (FILE_SYNC) guest WRITE: into the local durable overlay (``WriteOverlay``, fsync'd),
   and the same followed by a PUT of the 64 KiB overlay block to the store, as a write-through
   overlay would do before the reply (``docs/scale-out.md``), for 4 KiB and 64 KiB writes.
2. The shared state's operations: a lease renewal (conditional PUT, ``If-Match``), a watcher's
   GET, the handle key's create-once PUT (``If-None-Match: *``).

The store is started here unless ``--env FILE`` names a running one (``scripts/ceph-rgw.sh``).
Run: ``.venv/bin/python benchmarks/scaleout.py``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import obstore

from liverecovery.catalog.objects import S3Location, StoreOptions
from liverecovery.catalog.shared_state import ObjectSharedState
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.nfs.filesystem import Stability
from liverecovery.testing.objstore import RadosGateway

BLOCK = 64 * 1024


def _ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "median_ms": round(statistics.median(values) * 1000, 3),
        "p90_ms": round(values[int(len(values) * 0.9)] * 1000, 3),
    }


async def stable_writes(rgw: RadosGateway, work: Path, size: int, n: int) -> dict[str, Any]:
    overlay = await WriteOverlay.open(work / f"overlay-{size}", size=1 << 30)
    store = rgw.store()
    local: list[float] = []
    through: list[float] = []
    prefix = f"bench-scaleout/{uuid.uuid4().hex[:8]}"
    try:
        for i in range(n):
            data = os.urandom(size)
            for out, put in ((local, False), (through, True)):
                offset = (2 * i + put) * BLOCK
                base = {o: bytes(length) for o, length in overlay.to_fill(offset, size)}
                t0 = time.perf_counter()
                await overlay.write(offset, data, Stability.FILE_SYNC, base)
                if put:
                    block = await overlay.read(offset - offset % BLOCK, BLOCK)
                    await obstore.put_async(store, f"{prefix}/{offset // BLOCK}", block)
                out.append(time.perf_counter() - t0)
    finally:
        await overlay.aclose()
    return {"local": _ms(local), "write_through": _ms(through)}


async def state_ops(rgw: RadosGateway, n: int) -> dict[str, Any]:
    for key, value in rgw.env.items():
        os.environ[key] = value
    state = ObjectSharedState(
        S3Location(rgw.bucket, f"bench-state-{uuid.uuid4().hex[:8]}"), StoreOptions()
    )
    creates: list[float] = []
    renewals: list[float] = []
    gets: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        etag = await state.create(f"once/{i}", os.urandom(32))
        creates.append(time.perf_counter() - t0)
        assert etag
    etag = await state.create("leases/127.0.0.2", b"0")
    for i in range(n):
        assert etag
        t0 = time.perf_counter()
        etag = await state.replace("leases/127.0.0.2", str(i + 1).encode(), etag)
        renewals.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await state.get("leases/127.0.0.2")
        gets.append(time.perf_counter() - t0)
    return {"create_if_none_match": _ms(creates), "renew_if_match": _ms(renewals), "get": _ms(gets)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--env", type=Path, help="the env file of a running ceph-rgw.sh store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scaleout-bench-") as tmp:
        work = Path(tmp)
        if args.env:
            env = dict(
                line.split("=", 1) for line in args.env.read_text().splitlines() if "=" in line
            )
            rgw = RadosGateway(args.env.parent, {k: v.strip('"') for k, v in env.items()})
            own = False
        else:
            rgw = RadosGateway.start(work / "rgw")
            own = True
        try:
            result = {
                "stable_write_4k": anyio.run(stable_writes, rgw, work, 4096, args.n),
                "stable_write_64k": anyio.run(stable_writes, rgw, work, BLOCK, args.n),
                "shared_state": anyio.run(state_ops, rgw, args.n),
                "load": os.getloadavg(),
            }
        finally:
            if own:
                rgw.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
