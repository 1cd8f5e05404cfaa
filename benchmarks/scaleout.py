"""What several serving nodes cost per operation, against the real store (Ceph RGW on loopback).

1. A stable (FILE_SYNC) guest WRITE: into the local durable overlay (``WriteOverlay``, fsync'd),
   and into the write-through overlay (``StoreBackedOverlay``: the same, then the touched 64 KiB
   blocks PUT to the shared state in the store before it returns; ``docs/scale-out.md``), for
   4 KiB and 64 KiB writes, each to a new block and each rewriting a block (``replace``).
2. The shared state's operations: a lease renewal (conditional PUT, ``If-Match``), a watcher's
   GET, the handle key's create-once PUT (``If-None-Match: *``).
3. A takeover's overlay open: ``--blocks`` 64 KiB blocks written under epoch 1, then opened
   under epoch 2 (``store_backed_overlays``: restored, copied into epoch 2, marked complete),
   side by side with the restore alone (``restore_overlay`` into a fresh overlay).
4. A stable 128-byte WRITE to a VM folder file (a lock file's heartbeat): ``LocalFilesystem``
   vs ``StoreBackedFolder`` (its block PUT before the reply).

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

from liverecovery.catalog.objects import S3Location, StoreOptions
from liverecovery.catalog.shared_state import ObjectSharedState
from liverecovery.datastore.folder_store import StoreBackedFolder
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.datastore.overlay_store import (
    StoreBackedOverlay,
    restore_overlay,
    store_backed_overlays,
)
from liverecovery.nfs.filesystem import SetAttributes, Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.testing.objstore import RadosGateway

BLOCK = 64 * 1024


def _ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "median_ms": round(statistics.median(values) * 1000, 3),
        "p90_ms": round(values[int(len(values) * 0.9)] * 1000, 3),
    }


async def stable_writes(rgw: RadosGateway, work: Path, size: int, n: int) -> dict[str, Any]:
    _environ(rgw)
    state = ObjectSharedState(
        S3Location(rgw.bucket, f"bench-overlay-{uuid.uuid4().hex[:8]}"), StoreOptions()
    )
    local = await WriteOverlay.open(work / f"local-{size}", size=1 << 30)
    through = StoreBackedOverlay(
        await WriteOverlay.open(work / f"through-{size}", size=1 << 30),
        state,
        job_id="bench",
        disk="scsi0_0",
        epoch=1,
    )
    times: dict[str, list[float]] = {"local": [], "write_through": [], "write_through_rewrite": []}
    try:
        for i in range(n):
            data = os.urandom(size)
            offset = i * BLOCK
            for name, overlay in (
                ("local", local),
                ("write_through", through),
                ("write_through_rewrite", through),
            ):
                base = {o: bytes(length) for o, length in overlay.to_fill(offset, size)}
                if name == "write_through_rewrite":
                    data = os.urandom(size)
                t0 = time.perf_counter()
                await overlay.write(offset, data, Stability.FILE_SYNC, base)
                times[name].append(time.perf_counter() - t0)
    finally:
        await local.aclose()
        await through.aclose()
    return {name: _ms(values) for name, values in times.items()}


def _environ(rgw: RadosGateway) -> None:
    for key, value in rgw.env.items():
        os.environ[key] = value


async def state_ops(rgw: RadosGateway, n: int) -> dict[str, Any]:
    _environ(rgw)
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


async def takeover_open(rgw: RadosGateway, work: Path, blocks: int) -> dict[str, Any]:
    _environ(rgw)
    state = ObjectSharedState(
        S3Location(rgw.bucket, f"bench-takeover-{uuid.uuid4().hex[:8]}"), StoreOptions()
    )
    size = blocks * BLOCK
    first = await store_backed_overlays(state, 1)(
        work / "n1" / "jobs" / "j" / "overlays" / "d", size
    )
    try:
        for i in range(blocks):
            await first.write(i * BLOCK, os.urandom(BLOCK), Stability.UNSTABLE, {})
        await first.commit()
    finally:
        await first.aclose()
    fresh = await WriteOverlay.open(work / "restore-only", size=size)
    t0 = time.perf_counter()
    try:
        assert await restore_overlay(state, "j", "d", fresh) == blocks
    finally:
        await fresh.aclose()
    restore_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = await store_backed_overlays(state, 2)(
        work / "n2" / "jobs" / "j" / "overlays" / "d", size
    )
    open_s = time.perf_counter() - t0
    await second.aclose()
    return {"blocks": blocks, "restore_only_s": round(restore_s, 3), "open_s": round(open_s, 3)}


async def folder_writes(rgw: RadosGateway, work: Path, n: int) -> dict[str, Any]:
    _environ(rgw)
    state = ObjectSharedState(
        S3Location(rgw.bucket, f"bench-folder-{uuid.uuid4().hex[:8]}"), StoreOptions()
    )
    (work / "local-folder").mkdir()
    (work / "store-folder").mkdir()
    times: dict[str, list[float]] = {"local": [], "store_backed": []}
    local = LocalFilesystem(work / "local-folder")
    through = await StoreBackedFolder.open(work / "store-folder", state, job_id="j", epoch=1)
    try:
        for name, fs in (("local", local), ("store_backed", through)):
            fid = await fs.create(fs.root_id, ".lck-1", SetAttributes())
            for i in range(n):
                body = f"t={i}".encode().ljust(128)
                t0 = time.perf_counter()
                await fs.write(fid, 0, body, Stability.FILE_SYNC)
                times[name].append(time.perf_counter() - t0)
    finally:
        await local.aclose()
        await through.aclose()
    return {name: _ms(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--env", type=Path, help="the env file of a running ceph-rgw.sh store")
    parser.add_argument("--blocks", type=int, default=1000, help="overlay blocks of a takeover")
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
        load_before = os.getloadavg()
        try:
            result = {
                "stable_write_4k": anyio.run(stable_writes, rgw, work, 4096, args.n),
                "stable_write_64k": anyio.run(stable_writes, rgw, work, BLOCK, args.n),
                "shared_state": anyio.run(state_ops, rgw, args.n),
                "takeover_open": anyio.run(takeover_open, rgw, work, args.blocks),
                "folder_lock_write": anyio.run(folder_writes, rgw, work, args.n),
                "load_before": load_before,
                "load": os.getloadavg(),
            }
        finally:
            if own:
                rgw.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
