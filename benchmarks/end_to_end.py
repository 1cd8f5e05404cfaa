"""End-to-end live recovery on the real path, measured side by side with its peers.

The backups are real files: :func:`liverecovery.testing.samples.sample_vm` writes a VM folder
(monolithicSparse VMDK + .vmx + .nvram) that :class:`DirectoryCatalog` reads; the embedded default
serves it through the on-disk :class:`DiskBlockCache` and durable overlays, our NFS server on
loopback and the simulated ESX host.

1. Time to power-on and backup bytes read before power-on for 1 GiB, 16 GiB and 256 GiB sparse
   disks holding the same 64 MiB of boot-like data (ratio to the smallest: should stay near 1).
   Bytes are counted where they leave the backup: a wrapper around the catalog's disk readers and
   ``read_file``, sampled the moment the host's power-on call returns (background restore starts
   after it). The job's own ``bytes_fetched`` (the flat disks' cache misses) is reported next to it.
2. Full restore (the storage vMotion copy through NFS) throughput of a 1 GiB disk (a quarter
   data) vs ``cp --sparse=never`` of the same raw image on the same machine, in the same run
   (median of ``--rounds`` each). Then sparse disks (``--sparse``, by default 16 GiB and
   256 GiB holding 1 GiB of data each): the copier reads every byte, as ESXi does; the time and
   throughput of one restore each (``--sparse-timeout`` bounds a run).
3. 8 and 32 concurrent jobs (``--size`` disks, 1 GiB by default) in one process, each level in
   its own child process whose backups the parent wrote: aggregate copy throughput, and peak RSS
   per job above the child's RSS before its first job.

Run: ``.venv/bin/python benchmarks/end_to_end.py``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from liverecovery import LiveRecovery, Settings, State, StateChanged
from liverecovery.backends import AllocationRun, DiskInfo, DiskReader, RestorePoint, VmRef
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.config import GiB, MiB
from liverecovery.sim.embedded import embedded_environment
from liverecovery.testing.samples import SampleVm, expected_read, sample_vm

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
    """:class:`DirectoryCatalog` with counters of the disk and small-file bytes read from it."""

    def __init__(self, root: Path) -> None:
        self._inner = DirectoryCatalog(root)
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
    )


def _write_backup(root: Path, vms: Sequence[SampleVm]) -> None:
    for vm in vms:
        vm.write(root)


async def power_on(size: int) -> dict[str, float]:
    """Time from job start to the host's power-on returning, and the backup bytes that took."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        vm = sample_vm("vm", disk_sizes=(size,), head=DATA)
        await anyio.to_thread.run_sync(_write_backup, work / "backup", [vm])
        catalog = CountingCatalog(work / "backup")
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
                stats = job.stats
                await job.cancel()
            cache_stats = env.backends.cache.stats  # type: ignore[attr-defined]
        await catalog.aclose()
    return {
        "seconds": marks["powered_on"] - start,
        "backup_bytes": marks["disk_bytes"],
        "backup_file_bytes": marks["file_bytes"],
        "job_bytes_fetched_at_serving": stats.bytes_fetched - stats.bytes_restored,
        "cache_misses_total": cache_stats.misses,
    }


def restore_vms(size: int, jobs: int, data: int | None = None) -> list[SampleVm]:
    """The VMs of a restore run: ``data`` bytes (a quarter by default) of each disk are data
    (its head), the rest holes."""
    head = size // 4 if data is None else data
    return [sample_vm(f"vm{i}", disk_sizes=(size,), head=head, seed=i) for i in range(jobs)]


async def full_restore(
    size: int, jobs: int = 1, backup: Path | None = None, data: int | None = None
) -> dict[str, float]:
    """Run ``jobs`` recoveries at once and time their storage vMotion copies.

    ``backup`` is a folder already holding :func:`restore_vms` (written by the parent process, so
    that the child's peak RSS is the jobs' and not the sample writer's); else it is written here.
    """
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if backup is None:
            backup = work / "backup"
            await anyio.to_thread.run_sync(_write_backup, backup, restore_vms(size, jobs, data))
        catalog = CountingCatalog(backup)
        async with (
            embedded_environment(
                work, catalog, settings=_settings(work, trigger="delay"), write_interval_s=0.05
            ) as env,
            LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
        ):
            started = [await lr.start(env.spec(f"vm{i}")) for i in range(jobs)]
            spans: list[tuple[float, float]] = []

            async def watch(job: Any) -> None:
                begin = end = 0.0
                async for event in job.events():
                    if isinstance(event, StateChanged):
                        if event.state is State.MIGRATING:
                            begin = time.perf_counter()
                        if event.state is State.CLEANING_UP:
                            end = time.perf_counter()
                spans.append((begin, end))

            async with anyio.create_task_group() as tg:
                for job in started:
                    tg.start_soon(watch, job)
            states = [j.state for j in started]
        await catalog.aclose()
    assert all(s is State.COMPLETED for s in states), states
    first, last = min(b for b, _ in spans), max(e for _, e in spans)
    return {
        "seconds": last - first,
        "bytes": size * jobs,
        "bps": size * jobs / (last - first),
        "backup_bytes_read": catalog.disk_bytes,
    }


async def sparse_restore(size: int, data: int, timeout_s: float) -> dict[str, Any]:
    """One full restore of a ``size`` disk holding ``data`` bytes, or how long it ran before
    ``timeout_s`` stopped it."""
    start = time.perf_counter()
    with anyio.move_on_after(timeout_s) as scope:
        result = await full_restore(size, data=data)
    if scope.cancelled_caught:
        return {"size": size, "data": data, "timed_out_after_s": time.perf_counter() - start}
    return {"size": size, "data": data} | result


def cp_throughput(size: int) -> dict[str, Any]:
    """``cp`` of the raw image the 1-job restore's backup holds (same data, zeros elsewhere)."""
    runs = restore_vms(size, 1)[0].disks[0][1]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "raw.img", Path(tmp) / "copy.img"
        with open(src, "wb") as f:
            for offset in range(0, size, 64 * MiB):
                f.write(expected_read(size, runs, offset, min(64 * MiB, size - offset)))
        for _ in range(3):
            dst.unlink(missing_ok=True)
            subprocess.run(["sync"], check=True)
            start = time.perf_counter()
            subprocess.run(["cp", "--sparse=never", str(src), str(dst)], check=True)
            times.append(time.perf_counter() - start)
    elapsed = statistics.median(times)
    return {"seconds": elapsed, "bps": size / elapsed, "rounds_s": times}


def _rss_now() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(jobs: int, size: int, backup: Path) -> None:
    base = _rss_now()  # the interpreter and the library, before any job
    result = anyio.run(full_restore, size, jobs, backup)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            result
            | {
                "size": size,
                "base_rss": base,
                "peak_rss": rss,
                "rss_per_job": (rss - base) / jobs,
            }
        )
    )


def concurrent(jobs: int, size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        backup = Path(tmp) / "backup"
        _write_backup(backup, restore_vms(size, jobs))
        argv = [sys.executable, __file__, "--child", str(jobs), "--size", str(size)]
        out = subprocess.run(
            [*argv, "--backup", str(backup)],
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _uptime() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", type=int, default=0)
    parser.add_argument("--size", type=int, default=1 * GiB, help="disk size per concurrent job")
    parser.add_argument("--restore-size", type=int, default=1 * GiB)
    parser.add_argument("--levels", default="8,32", help="concurrency levels")
    parser.add_argument("--rounds", type=int, default=3, help="power-on rounds per size")
    parser.add_argument("--backup", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--sparse", default="16:1,256:1", help="sparse restores, GiB size:GiB data, comma-separated"
    )
    parser.add_argument("--sparse-timeout", type=float, default=300.0)
    parser.add_argument("--skip-power-on", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.size, args.backup)
        return
    load: dict[str, str] = {"start": _uptime()}
    sizes = {"1GiB": 1 * GiB, "16GiB": 16 * GiB, "256GiB": 256 * GiB}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in sizes}
    for _ in range(0 if args.skip_power_on else args.rounds):  # interleaved: load hits all alike
        for name, size in sizes.items():
            rounds[name].append(anyio.run(power_on, size))
    power: dict[str, dict[str, Any]] = {}
    for name, runs in rounds.items():
        if not runs:
            continue
        power[name] = min(runs, key=lambda r: r["seconds"]) | {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "rounds_s": [r["seconds"] for r in runs],
        }
    base = power.get("1GiB", {})
    for v in power.values():
        v["time_ratio"] = v["seconds"] / base["seconds"]
        v["bytes_ratio"] = v["backup_bytes"] / base["backup_bytes"]
        print(f"power-on {v}", file=sys.stderr)
    load["after_power_on"] = _uptime()
    restores = [anyio.run(full_restore, args.restore_size) for _ in range(args.rounds)]
    ours = {
        "bps": statistics.median(r["bps"] for r in restores),
        "rounds_bps": [r["bps"] for r in restores],
        "backup_bytes_read": restores[0]["backup_bytes_read"],
    }
    peer = cp_throughput(args.restore_size)
    print(f"full restore ours {ours} cp {peer}", file=sys.stderr)
    load["after_full_restore"] = _uptime()
    sparse: dict[str, dict[str, Any]] = {}
    for spec in filter(None, args.sparse.split(",")):
        size_gib, data_gib = (int(x) for x in spec.split(":"))
        run = anyio.run(sparse_restore, size_gib * GiB, data_gib * GiB, args.sparse_timeout)
        sparse[f"{size_gib}GiB"] = run
        print(f"sparse restore {run}", file=sys.stderr)
    load["after_sparse_restores"] = _uptime()
    conc = {}
    for n in (int(x) for x in filter(None, args.levels.split(","))):
        conc[str(n)] = concurrent(n, args.size)
        load[f"after_{n}_jobs"] = _uptime()
        print(f"concurrent {n}: {conc[str(n)]}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "end_to_end",
                "path": "DirectoryCatalog(monolithicSparse) + DiskBlockCache + durable overlay",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                "loadavg": load,
                "power_on": power,
                "full_restore_ours_bps": ours["bps"],
                "full_restore_ours_rounds_bps": ours["rounds_bps"],
                "full_restore_cp_bps": peer["bps"],
                "full_restore_cp_rounds_s": peer["rounds_s"],
                "full_restore_ratio": ours["bps"] / peer["bps"],
                "sparse_restores": sparse,
                "concurrent": conc,
            }
        )
    )


if __name__ == "__main__":
    main()
