"""End-to-end live recovery on the embedded default, measured side by side with its peers.

1. Time to power-on and backup bytes read before power-on for 1 GiB, 16 GiB and 256 GiB sparse
   disks holding the same 64 MiB of data (ratio to the smallest: should stay near 1).
2. Full restore (the storage vMotion copy through NFS) throughput vs ``cp`` of the same raw image
   on the same machine, in the same run.
3. 8 and 32 concurrent jobs in one process (each level in its own child process): aggregate
   copy throughput and peak RSS per job.

Run: ``.venv/bin/python benchmarks/end_to_end.py``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from liverecovery import LiveRecovery, Settings, State, StateChanged
from liverecovery.config import GiB, MiB
from liverecovery.embedded import embedded_environment
from liverecovery.testing import MemoryCatalog

DATA = 64 * MiB


def _settings(work: Path, trigger: str = "manual") -> Settings:
    return Settings(
        job_results_dir=work / "results",
        migration_trigger=trigger,
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
    )


async def power_on(size: int) -> dict[str, float]:
    """Time from job start to the VM powered on, and the backup bytes that took."""
    catalog = MemoryCatalog()
    backup = catalog.add_vm("vm", disk_sizes=(size,), data_per_disk=DATA)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with embedded_environment(work, catalog, settings=_settings(work)) as env:
            lr = LiveRecovery(env.settings, env.backends, builder=env.builder)
            async with lr:
                start = time.perf_counter()
                job = await lr.start(env.spec("vm"))
                async for event in job.events():
                    if isinstance(event, StateChanged) and event.state is State.SERVING:
                        break
                elapsed = time.perf_counter() - start
                read = sum(d.bytes_read for d in backup.disks.values())
                await job.cancel()
    return {"seconds": elapsed, "backup_bytes": read}


async def full_restore(size: int, jobs: int = 1) -> dict[str, float]:
    """Run ``jobs`` recoveries at once and time their storage vMotion copies."""
    catalog = MemoryCatalog()
    for i in range(jobs):
        catalog.add_vm(f"vm{i}", disk_sizes=(size,), data_per_disk=size // 4)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
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
    assert all(s is State.COMPLETED for s in states), states
    first, last = min(b for b, _ in spans), max(e for _, e in spans)
    return {"seconds": last - first, "bytes": size * jobs, "bps": size * jobs / (last - first)}


def cp_throughput(size: int) -> dict[str, float]:
    """``cp`` of a raw image with the same content layout (a quarter data, rest holes)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "raw.img", Path(tmp) / "copy.img"
        with open(src, "wb") as f:
            f.write(os.urandom(size // 4))
            f.truncate(size)
        subprocess.run(["sync"], check=True)
        start = time.perf_counter()
        subprocess.run(["cp", "--sparse=never", str(src), str(dst)], check=True)
        elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "bps": size / elapsed}


def child(jobs: int, size: int) -> None:
    result = anyio.run(full_restore, size, jobs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result | {"peak_rss": rss, "rss_per_job": rss / jobs}))


def concurrent(jobs: int, size: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(jobs), "--size", str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", type=int, default=0)
    parser.add_argument("--size", type=int, default=256 * MiB)
    parser.add_argument("--restore-size", type=int, default=1 * GiB)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.size)
        return
    sizes = {"1GiB": 1 * GiB, "16GiB": 16 * GiB, "256GiB": 256 * GiB}
    power = {name: anyio.run(power_on, size) for name, size in sizes.items()}
    base = power["1GiB"]
    for v in power.values():
        v["time_ratio"] = v["seconds"] / base["seconds"]
        v["bytes_ratio"] = v["backup_bytes"] / base["backup_bytes"]
        print(f"power-on {v}", file=sys.stderr)
    ours = anyio.run(full_restore, args.restore_size)
    peer = cp_throughput(args.restore_size)
    print(f"full restore ours {ours} cp {peer}", file=sys.stderr)
    conc = {str(n): concurrent(n, args.size) for n in (8, 32)}
    print(f"concurrent {conc}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "end_to_end",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                "power_on": power,
                "full_restore_ours_bps": ours["bps"],
                "full_restore_cp_bps": peer["bps"],
                "full_restore_ratio": ours["bps"] / peer["bps"],
                "concurrent": conc,
            }
        )
    )


if __name__ == "__main__":
    main()
