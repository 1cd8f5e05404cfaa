"""Backups in an S3 store vs the same backup in a local folder, side by side in one run.

The store is Ceph's RADOS Gateway on this machine (``scripts/ceph-rgw.sh``: one mon, one memstore
OSD, the gateway on loopback), started here unless ``--env FILE`` names a running one.

1. Power-on: time from the job's start to the simulated host's power-on returning, and the
   backup bytes read until then (counted where they leave the catalog's disk readers), for a
   1 GiB sparse disk holding 64 MiB of boot-like data, from the local folder and from the store
   (``--rounds`` each, alternating, medians). Goal: store time <= 2x local, bytes equal.
2. Full restore: the storage vMotion copy through NFS of a 1 GiB disk that is all data
   (``--restore-size``), served from the store; against the raw obstore rate on the same extent
   object, read with ranged GETs of the flat disk's block size (1 MiB) at the read-ahead's depth
   (8 in flight), and with one GET stream. Goal: ours >= 0.8x the raw parallel rate. Beside
   them: the same copy from the local folder (what the NFS path and the simulated host's copier
   allow at all), and the catalog's disk reader alone reading the object-backed disk in 1 MiB
   reads, 8 in flight (our object layer without NFS).
3. Background restore: the job's restore of that disk from the backup into the node's block
   cache while the VM runs (the one place a recovery reads the whole backup; the storage vMotion
   then copies from the cache), with ``restore_depth`` 1, 4 and 8, from the store and from the
   local folder; against the same raw rate.

Run: ``.venv/bin/python benchmarks/objstore.py``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs
import obstore

from liverecovery import LiveRecovery, Progress, Settings, State, StateChanged
from liverecovery.backends import (
    AllocationRun,
    CatalogReader,
    DiskInfo,
    DiskReader,
    RestorePoint,
    VmRef,
)
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.config import GiB, MiB
from liverecovery.sim.embedded import embedded_environment
from liverecovery.testing.objstore import RadosGateway, upload_tree
from liverecovery.testing.samples import sample_vm

DATA = 64 * MiB


class CountingReader:
    """A catalog disk reader that counts the bytes it returns (what left the backup)."""

    def __init__(self, inner: DiskReader, counter: CountingCatalog) -> None:
        self._inner = inner
        self._counter = counter

    @property
    def size(self) -> int:
        return self._inner.size

    async def read(self, offset: int, length: int) -> bytes:
        data = await self._inner.read(offset, length)
        self._counter.disk_bytes += len(data)
        return data

    async def allocation(self) -> Sequence[AllocationRun]:
        return await self._inner.allocation()

    async def aclose(self) -> None:
        await self._inner.aclose()


class CountingCatalog:
    """Any catalog, with counters of the disk and small-file bytes read from it."""

    def __init__(self, inner: CatalogReader) -> None:
        self._inner = inner
        self.disk_bytes = 0
        self.file_bytes = 0

    async def vm_names(self) -> Sequence[str]:
        return await self._inner.vm_names()

    async def restore_points(self, vm_name: str) -> Sequence[RestorePoint]:
        return await self._inner.restore_points(vm_name)

    async def restore_point(self, vm_name: str, point_id: str | None = None) -> RestorePoint:
        return await self._inner.restore_point(vm_name, point_id)

    async def read_file(self, point: RestorePoint, name: str) -> bytes:
        data = await self._inner.read_file(point, name)
        self.file_bytes += len(data)
        return data

    async def open_disk(self, point: RestorePoint, disk: DiskInfo) -> DiskReader:
        return CountingReader(await self._inner.open_disk(point, disk), self)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _settings(work: Path, trigger: str = "manual") -> Settings:
    return Settings(
        job_results_dir=work / "results",
        migration_trigger=trigger,
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        cache_min_free_percent=0.0,  # a shared machine's disk may be nearly full
    )


def _catalog(where: str, rgw: RadosGateway) -> CatalogReader:
    if where.startswith("s3://"):
        return ObjectCatalog(where, environ=rgw.environ())
    return DirectoryCatalog(where)


async def power_on(where: str, rgw: RadosGateway) -> dict[str, float]:
    """Time from job start to the host's power-on returning, and the backup bytes that took."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog = CountingCatalog(_catalog(where, rgw))
        async with embedded_environment(work, catalog, settings=_settings(work)) as env:
            marks: dict[str, float] = {}
            real_power_on = env.esx.power_on

            async def timed_power_on(ref: VmRef) -> None:
                await real_power_on(ref)
                marks["powered_on"] = time.perf_counter()
                marks["disk_bytes"] = catalog.disk_bytes
                marks["file_bytes"] = catalog.file_bytes

            env.esx.power_on = timed_power_on  # type: ignore[method-assign,assignment]
            async with LiveRecovery(env.settings, env.backends, builder=env.builder) as lr:
                start = time.perf_counter()
                job = await lr.start(env.spec("vm"))
                async for event in job.events():
                    if isinstance(event, StateChanged) and event.state is State.SERVING:
                        break
                await job.stop(power_off=True)
        await catalog.aclose()
    return {
        "seconds": marks["powered_on"] - start,
        "backup_bytes": marks["disk_bytes"],
        "backup_file_bytes": marks["file_bytes"],
    }


async def full_restore(where: str, rgw: RadosGateway, vm: str) -> dict[str, float]:
    """One recovery whose storage vMotion copies the disk at once: its copy time."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog = CountingCatalog(_catalog(where, rgw))
        settings = _settings(work, trigger="delay")
        async with (
            embedded_environment(work, catalog, settings=settings, write_interval_s=0.05) as env,
            LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
        ):
            job = await lr.start(env.spec(vm))
            begin = end = 0.0
            async for event in job.events():
                if isinstance(event, StateChanged):
                    if event.state is State.MIGRATING:
                        begin = time.perf_counter()
                    if event.state is State.CLEANING_UP:
                        end = time.perf_counter()
            size = sum(d.capacity_bytes for d in (await catalog.restore_point(vm)).disks)
            state = job.state
        await catalog.aclose()
    assert state is State.COMPLETED, state
    return {
        "seconds": end - begin,
        "bytes": size,
        "bps": size / (end - begin),
        "backup_bytes_read": catalog.disk_bytes,
    }


async def background_restore(where: str, rgw: RadosGateway, vm: str, depth: int) -> float:
    """The job's background restore (backup -> the node's block cache) of the whole disk while
    the VM runs, ``restore_depth`` blocks at once: its rate, from the first SERVING to the last
    byte restored. This is where a recovery reads the backup in full; the storage vMotion then
    copies from the cache."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog = _catalog(where, rgw)
        settings = attrs.evolve(_settings(work), restore_depth=depth, progress_interval_s=0.02)
        async with (
            embedded_environment(work, catalog, settings=settings, write_interval_s=3600) as env,
            LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
        ):
            job = await lr.start(env.spec(vm))
            begin = 0.0
            total = 0
            async for event in job.events():
                if isinstance(event, StateChanged) and event.state is State.SERVING:
                    begin = time.perf_counter()
                if (
                    isinstance(event, Progress)
                    and event.bytes_total
                    and event.bytes_restored >= event.bytes_total
                ):
                    total = event.bytes_total
                    break
            seconds = time.perf_counter() - begin
            await job.stop(power_off=True)
        await catalog.aclose()
    return total / seconds


async def raw_gets(rgw: RadosGateway, key: str, block: int, depth: int) -> dict[str, float]:
    """The whole object read with ranged GETs of ``block`` bytes, ``depth`` in flight."""
    store = rgw.store()
    size = (await obstore.head_async(store, key))["size"]
    offsets = iter(range(0, size, block))
    got = 0

    async def worker() -> None:
        nonlocal got
        for offset in offsets:
            data = await obstore.get_range_async(
                store, key, start=offset, end=min(size, offset + block)
            )
            got += len(data)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(depth)))
    seconds = time.perf_counter() - start
    assert got == size
    return {"seconds": seconds, "bytes": size, "bps": size / seconds}


async def reader_rate(where: str, rgw: RadosGateway, vm: str, block: int, depth: int) -> float:
    """The catalog's disk reader (grain tables, ``ObjectWindow`` GETs, worker threads) reading
    the whole disk in ``block`` reads, ``depth`` in flight: our layer without NFS."""
    catalog = _catalog(where, rgw)
    point = await catalog.restore_point(vm)
    reader = await catalog.open_disk(point, point.disks[0])
    offsets = iter(range(0, reader.size, block))
    got = 0

    async def worker() -> None:
        nonlocal got
        for offset in offsets:
            data = await reader.read(offset, block)
            got += len(data)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(depth):
            tg.start_soon(worker)
    seconds = time.perf_counter() - start
    await reader.aclose()
    await catalog.aclose()
    assert got == reader.size
    return got / seconds


def _uptime() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--restore-rounds", type=int, default=3)
    parser.add_argument("--power-on-size", type=int, default=1 * GiB)
    parser.add_argument("--restore-size", type=int, default=1 * GiB)
    parser.add_argument("--env", type=Path, help="the env file of a running ceph-rgw.sh store")
    args = parser.parse_args()
    load: dict[str, str] = {"start": _uptime()}
    with tempfile.TemporaryDirectory(prefix="objstore-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        if args.env:
            env = dict(
                line.split("=", 1) for line in args.env.read_text().splitlines() if "=" in line
            )
            rgw = RadosGateway(args.env.parent, {k: v.strip('"') for k, v in env.items()})
            own = False
        else:
            rgw = RadosGateway.start(work / "rgw")
            own = True
        rgw_start_s = time.perf_counter() - started
        try:
            local = work / "backup"
            sample_vm("vm", disk_sizes=(args.power_on_size,), head=DATA).write(local)
            sample_vm("big", disk_sizes=(args.restore_size,), head=args.restore_size).write(local)
            upload_tree(rgw.store(), local, "bench")
            s3 = rgw.url("bench")
            load["after_setup"] = _uptime()
            rounds: dict[str, list[dict[str, float]]] = {"local": [], "s3": []}
            for _ in range(args.rounds):
                rounds["local"].append(anyio.run(power_on, str(local), rgw))
                rounds["s3"].append(anyio.run(power_on, s3, rgw))
            load["after_power_on"] = _uptime()
            restores = [anyio.run(full_restore, s3, rgw, "big") for _ in range(args.restore_rounds)]
            extent = "bench/big/big.vmdk"
            parallel = [
                anyio.run(raw_gets, rgw, extent, MiB, 8) for _ in range(args.restore_rounds)
            ]
            single = anyio.run(raw_gets, rgw, extent, MiB, 1)
            readers = [
                anyio.run(reader_rate, s3, rgw, "big", MiB, 8) for _ in range(args.restore_rounds)
            ]
            local_restore = anyio.run(full_restore, str(local), rgw, "big")
            background = {
                f"{name}_depth_{depth}": [
                    anyio.run(background_restore, where, rgw, "big", depth)
                    for _ in range(args.restore_rounds)
                ]
                for depth in (1, 4, 8)
                for name, where in (("s3", s3), ("local", str(local)))
            }
            load["after_restore"] = _uptime()
        finally:
            if own:
                rgw.stop()

    def median(values: list[float]) -> float:
        return statistics.median(values)

    power = {
        where: {
            "seconds": median([r["seconds"] for r in rs]),
            "rounds_s": [round(r["seconds"], 4) for r in rs],
            "backup_bytes": median([r["backup_bytes"] for r in rs]),
            "backup_file_bytes": median([r["backup_file_bytes"] for r in rs]),
        }
        for where, rs in rounds.items()
    }
    ours = median([r["bps"] for r in restores])
    raw = median([r["bps"] for r in parallel])
    result: dict[str, Any] = {
        "benchmark": "objstore",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {_cpu()}",
        "python": platform.python_version(),
        "obstore": obstore.__version__,
        "load": load,
        "rgw_start_s": round(rgw_start_s, 2),
        "power_on": power,
        "power_on_time_ratio_s3_to_local": power["s3"]["seconds"] / power["local"]["seconds"],
        "power_on_bytes_equal": power["s3"]["backup_bytes"] == power["local"]["backup_bytes"],
        "full_restore_s3_bps": ours,
        "full_restore_s3_rounds_bps": [round(r["bps"]) for r in restores],
        "full_restore_local_bps": local_restore["bps"],
        "raw_get_1MiB_x8_bps": raw,
        "raw_get_1MiB_x8_rounds_bps": [round(r["bps"]) for r in parallel],
        "raw_get_1MiB_x1_bps": single["bps"],
        "full_restore_ratio_to_raw_x8": ours / raw,
        "reader_1MiB_x8_bps": median(readers),
        "reader_1MiB_x8_rounds_bps": [round(r) for r in readers],
        "reader_ratio_to_raw_x8": median(readers) / raw,
        "background_restore_bps": {k: median(v) for k, v in background.items()},
        "background_restore_rounds_bps": {k: [round(r) for r in v] for k, v in background.items()},
        "background_restore_s3_ratio_to_raw_x8": {
            k: median(v) / raw for k, v in background.items() if k.startswith("s3")
        },
    }
    print(
        f"power-on: local {power['local']['seconds']:.3f} s, "
        f"s3 {power['s3']['seconds']:.3f} s "
        f"(x{result['power_on_time_ratio_s3_to_local']:.2f}); backup bytes "
        f"{power['local']['backup_bytes'] / MiB:.1f} vs {power['s3']['backup_bytes'] / MiB:.1f} MiB"
    )
    print(
        f"full restore from s3: {ours / 1e6:.0f} MB/s; raw GETs 1 MiB x8: {raw / 1e6:.0f} MB/s "
        f"(ratio {result['full_restore_ratio_to_raw_x8']:.2f}); x1: {single['bps'] / 1e6:.0f} "
        f"MB/s; from the local folder: {local_restore['bps'] / 1e6:.0f} MB/s; the disk reader "
        f"alone 1 MiB x8: {median(readers) / 1e6:.0f} MB/s "
        f"(ratio {result['reader_ratio_to_raw_x8']:.2f})"
    )
    print(
        "background restore (backup -> cache) "
        + ", ".join(f"{k}: {median(v) / 1e6:.0f} MB/s" for k, v in background.items())
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
