"""A recovery plan of many VMs in one process on the embedded environment with several hosts.

The backups are real files (:func:`liverecovery.testing.samples.sample_vm`: a monolithicSparse
VMDK of ``--size`` with boot-like data, read by :class:`DirectoryCatalog`); our NFS server on
loopback serves them through the on-disk cache and durable overlays to ``--hosts`` simulated
ESX hosts, which mount, register, power on (boot reads), run a writing guest and storage-vMotion
each VM into their local datastore.

1. One VM alone: the time from ``run_plan`` to its power-on (a plan of one VM, its own
   environment).
2. ``--vms`` VMs in three boot groups (10 %, 40 %, 50 %), ``max_in_flight`` jobs starting at
   once: the time from ``run_plan`` to the last power-on, and its ratio to 1. (target <= 10).
3. RSS per job: the process's RSS once every VM is powered on, above its RSS before the plan,
   divided by the VMs (target <= 20 MiB), and the peak.
4. Read latency of the running VMs while storage vMotions run: once all are powered on,
   ``--migrate`` of them are storage-vMotioned at once (``migrate_now``; the slots
   ``max_migrations`` / ``max_migrations_per_host`` bound how many copy at a time) while a probe
   reads 64 KiB at random offsets of the flat disks of VMs still served from the backup, through
   their host's own NFS mount; p50/p99/max (target p99 <= 50 ms). The rest are then stopped
   (``stop(power_off=True)``, the operator's explicit request) to end the run.

5. The server's CPU per VM powered on: the CPU time of the server's process (all its threads,
   and its event loop's thread alone) from ``run_plan`` to the last power-on, divided by the VMs.
   The simulated vSphere answers at once, so on this machine one VM's power-on is nothing but
   our CPU and a plan of many is CPU-bound: 100 VMs take at least 100 x (CPU per VM) / cores,
   and the ratio of 2. says how much CPU a VM costs more than how the plan is scheduled. In
   ``remote`` mode that CPU is the server's and the jobs' alone; ``inprocess`` it includes the
   simulated hosts (boot reads, guests, NFS clients).
6. The same plan (1. and 2., no migrations) with a modelled vSphere (``--vsphere-latency``,
   ``sim.latency.TaskLatency``): each NFS datastore mount, registration and power-on waits
   first, as a real vCenter/ESXi task does; this waiting costs no CPU. The default model is
   ``mount=0.3,register=0.3,power_on=1.0,jitter=0.2`` (seconds): figures of a lightly loaded
   vCenter, assumed, not measured here. The model's shape (a delay per method, jitter as a
   coefficient of variation) is govmomi vcsim's ``DelayConfig`` (github.com/vmware/govmomi
   simulator/model.go, commit 069b385b4d882f869508e912ceca21a8a39dd1a2), which ships no
   figures; no public per-task latency figure was found for these tasks (VMware's performance
   blog gives vCenter throughput instead: 60-70 operations/s for vCenter 6.5, "vCenter 6.5
   Performance: what does 6x mean?", blogs.vmware.com/performance, 2017-04, so the ~300 tasks
   of a 100-VM plan are not limited by vCenter's throughput). ``--vsphere-latency none`` skips
   it. Both ratios are reported: the zero-latency one (CPU-bound) and the modelled one; neither
   replaces the other.

``--hosts-mode`` (default ``both``, one after the other, remote first so the peak RSS of the
server's process is not the in-process run's): ``inprocess`` runs the simulated hosts in the
server's process (``sim.hosts.embedded_hosts``), ``remote`` one ``liverecovery.sim.remote``
process per host (``sim.remote_hosts.remote_embedded_hosts``; the probe's READ is then timed in
the host's process, ``RemoteSimulatedHost.timed_read``). RSS is the server's process only.

Not every VM is migrated: each guest write dirties a 1 MiB chunk of the host's local copy, so
100 VMs of 1 GiB migrating one after another would fill the disk of a small machine (they did:
about 1 GiB per long-waiting VM).

Run: ``.venv/bin/python benchmarks/plan.py`` (``--vms 20`` for a quick look). Last line: JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import attrs

from liverecovery import LiveRecovery, Settings
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.config import GiB, MiB
from liverecovery.job.states import RUNNING_STATES, TERMINAL_STATES, State
from liverecovery.plan.events import VmChanged
from liverecovery.plan.model import BootGroup, Placement, Plan, PlanVm
from liverecovery.plan.runner import PlanRun
from liverecovery.sim.hosts import EmbeddedHosts, embedded_hosts
from liverecovery.sim.latency import TaskLatency, parse_latency
from liverecovery.sim.remote_hosts import RemoteEmbeddedHosts, remote_embedded_hosts
from liverecovery.testing.samples import sample_vm

MODELLED = "mount=0.3,register=0.3,power_on=1.0,jitter=0.2"


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _du(root: Path) -> dict[str, int]:
    """Bytes allocated under each top folder of ``root`` (what the run wrote to disk)."""
    found: dict[str, int] = {}
    for path in root.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_file():
            top = path.relative_to(root).parts[0]
            found[top] = found.get(top, 0) + st.st_blocks * 512
    return found


def make_plan(names: list[str], hosts: tuple[str, ...], in_flight: int) -> Plan:
    n = len(names)
    cuts = (max(1, n // 10), max(1, n // 10) + max(1, (n * 4) // 10))
    groups = tuple(BootGroup(g) for g in ("db", "app", "web")[: min(3, n)])

    def group(i: int) -> str:
        if i < cuts[0] or len(groups) == 1:
            return "db"
        return "app" if i < cuts[1] or len(groups) == 2 else "web"

    vms = tuple(
        PlanVm(vm=name, group=group(i), datastore="datastore1", esx_address="127.0.0.1")
        for i, name in enumerate(names)
    )
    return Plan(
        "bench",
        groups,
        vms,
        hosts=hosts,
        placement=Placement.ROUND_ROBIN,
        max_in_flight=in_flight,
        source="bench",
    )


def settings(work: Path, args: argparse.Namespace) -> Settings:
    return Settings(
        job_results_dir=work / "results",
        migration_trigger="manual",
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        max_migrations=args.max_migrations,
        max_migrations_per_host=args.max_migrations_per_host,
        progress_interval_s=5.0,
        nfs_max_connections_per_address=1024,
        nfs_max_connections=1024,
    )


async def _probe(
    env: EmbeddedHosts | RemoteEmbeddedHosts,
    run: PlanRun,
    lr: LiveRecovery,
    out: list[float],
    size: int,
) -> None:
    """Random 64 KiB reads of the VMs served from the backup, while any migration runs."""
    rng = random.Random(1)
    while True:
        migrating = [j for j in lr.jobs() if j.state is State.MIGRATING]
        serving = [j for j in lr.jobs() if j.state is State.SERVING and j.vm is not None]
        if not migrating or not serving:
            await anyio.sleep(0.02)
            continue
        job = rng.choice(serving)
        assert job.vm is not None
        if isinstance(env, RemoteEmbeddedHosts):
            # timed in the host's process, through its own mount
            remote, rref = env.hosts.owner(job.vm)
            offset = rng.randrange(max(1, size // (64 * 1024))) * 64 * 1024
            try:
                took = await remote.timed_read(rref, offset, 64 * 1024)
            except Exception:
                took = None
            if took is not None and any(j.state is State.MIGRATING for j in lr.jobs()):
                out.append(took)
            await anyio.sleep(0.005)
            continue
        esx, ref = env.hosts.owner(job.vm)
        vm = esx.vms.get(ref.moref)
        if vm is None or not vm.disks or vm.datastore not in esx.mounts:
            await anyio.sleep(0.005)
            continue
        disk = vm.disks[0]
        offset = rng.randrange(max(1, disk.size // (64 * 1024))) * 64 * 1024
        client = esx.mounts[vm.datastore].client
        started = time.monotonic()
        try:
            await client.read(disk.fh, offset, 64 * 1024)
        except Exception:
            continue  # the VM switched over to its local copy meanwhile
        if any(j.state is State.MIGRATING for j in lr.jobs()):
            out.append(time.monotonic() - started)
        await anyio.sleep(0.005)


async def run_one(
    work: Path,
    names: list[str],
    args: argparse.Namespace,
    *,
    migrate: int,
    mode: str,
    latency: TaskLatency | None = None,
) -> dict[str, Any]:
    hosts = tuple(f"esx-{i + 1}" for i in range(min(args.hosts, len(names))))
    plan = make_plan(names, hosts, args.in_flight)
    latencies: list[float] = []
    environment = remote_embedded_hosts if mode == "remote" else embedded_hosts
    async with (
        DirectoryCatalog(work / "backup") as catalog,
        environment(
            work / f"env-{mode}-{len(names)}",
            catalog,
            hosts=hosts,
            settings=settings(work / mode, args),
            write_interval_s=args.write_interval_s,
            latency=latency,
        ) as env,
        LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
    ):
        base = _rss_now()
        started = time.monotonic()
        cpu0, loop0 = time.process_time(), time.thread_time()
        run = await lr.run_plan(plan)
        pending = {v.vm for v in plan.vms}
        with anyio.fail_after(args.timeout):
            async for event in run.events():
                if isinstance(event, VmChanged) and (
                    event.state in RUNNING_STATES or event.state in TERMINAL_STATES
                ):
                    pending.discard(event.vm)
                if not pending:
                    break
        all_on = time.monotonic() - started
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        rss_at_power_on = _rss_now()
        migrated_s = None
        if migrate:
            chosen = lr.jobs()[:migrate]
            t0 = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_probe, env, run, lr, latencies, args.size)

                async def one(job: Any) -> None:
                    await job.migrate_now()
                    await job.wait()

                async with anyio.create_task_group() as movers:
                    for job in chosen:
                        movers.start_soon(one, job)
                migrated_s = time.monotonic() - t0
                tg.cancel_scope.cancel()
        # the rest: the operator's explicit stop (power off, undo), to end the benchmark
        async with anyio.create_task_group() as tg:
            for job in lr.jobs():
                if not job.done:
                    tg.start_soon(functools.partial(job.stop, power_off=True))
        with anyio.fail_after(args.timeout):
            summary = await run.wait()
        used = _du(work)
    powered = [r["power_on_s"] for r in summary["vms"] if r["power_on_s"] is not None]
    latencies.sort()

    def pct(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None

    return {
        "hosts_mode": mode,
        "vms": len(names),
        "hosts": len(hosts),
        "failed": [r["vm"] for r in summary["vms"] if r["power_on_s"] is None],
        "all_powered_on_s": max(powered) if powered else None,
        "all_powered_on_wall_s": all_on,
        "vsphere_latency": None if latency is None else attrs.asdict(latency),
        "server_cpu_s": cpu,
        "server_cpu_per_vm_ms": cpu / len(names) * 1000,
        "server_loop_cpu_per_vm_ms": loop_cpu / len(names) * 1000,
        "rss_before": base,
        "rss_at_power_on": rss_at_power_on,
        "rss_per_job_mib": (rss_at_power_on - base) / len(names) / MiB,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "migrated": migrate,
        "migrations_s": migrated_s,
        "disk_bytes_used": used,
        "reads_during_migrations": len(latencies),
        "read_p50_ms": None if not latencies else statistics.median(latencies) * 1000,
        "read_p99_ms": None if (v := pct(0.99)) is None else v * 1000,
        "read_max_ms": None if not latencies else latencies[-1] * 1000,
    }


def _clean(work: Path, mode: str, vms: int) -> None:
    """Remove a mode's environments and results (the next runs start afresh; the disk is small)."""
    for name in (f"env-{mode}-1", f"env-{mode}-{vms}", mode):
        shutil.rmtree(work / name, ignore_errors=True)


def _ratio(one: dict[str, Any], many: dict[str, Any]) -> float | None:
    if one["all_powered_on_s"] and many["all_powered_on_s"]:
        return float(many["all_powered_on_s"] / one["all_powered_on_s"])
    return None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lr-bench-plan-") as tmp:
        work = Path(tmp)
        names = [f"vm-{i:03d}" for i in range(args.vms)]
        t0 = time.monotonic()
        for i, name in enumerate(names):
            sample_vm(name, disk_sizes=(args.size,), seed=i).write(work / "backup")
        write_s = time.monotonic() - t0
        modes = ("remote", "inprocess") if args.hosts_mode == "both" else (args.hosts_mode,)
        by_mode: dict[str, Any] = {}
        for mode in modes:
            one = await run_one(work, names[:1], args, migrate=0, mode=mode)
            many = await run_one(
                work, names, args, migrate=min(args.migrate, len(names)), mode=mode
            )
            _clean(work, mode, len(names))
            by_mode[mode] = {
                "one": one,
                "many": many,
                "power_on_ratio": _ratio(one, many),
                "server_cpu_per_vm_ms": many["server_cpu_per_vm_ms"],
            }
            if args.vsphere_latency is not None:
                one = await run_one(
                    work, names[:1], args, migrate=0, mode=mode, latency=args.vsphere_latency
                )
                many = await run_one(
                    work, names, args, migrate=0, mode=mode, latency=args.vsphere_latency
                )
                _clean(work, mode, len(names))
                by_mode[mode]["modelled"] = {
                    "one": one,
                    "many": many,
                    "power_on_ratio": _ratio(one, many),
                }
    return {
        "benchmark": "plan",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "load_before": load_before,
        "size": args.size,
        "in_flight": args.in_flight,
        "max_migrations": args.max_migrations,
        "max_migrations_per_host": args.max_migrations_per_host,
        "backup_write_s": write_s,
        "hosts_mode": args.hosts_mode,
        "vsphere_latency": None
        if args.vsphere_latency is None
        else attrs.asdict(args.vsphere_latency),
        **by_mode,
        "load_after": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--size", type=int, default=GiB)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--max-migrations", type=int, default=2)
    parser.add_argument("--max-migrations-per-host", type=int, default=1)
    parser.add_argument(
        "--migrate", type=int, default=12, help="VMs storage-vMotioned while the rest run"
    )
    parser.add_argument(
        "--write-interval-s", type=float, default=1.0, help="each guest writes 4 KiB this often"
    )
    parser.add_argument(
        "--hosts-mode",
        choices=("inprocess", "remote", "both"),
        default="both",
        help="simulated ESX hosts in the server's process, one process each, or both in turn",
    )
    parser.add_argument(
        "--vsphere-latency",
        type=lambda text: None if text == "none" else parse_latency(text),
        default=parse_latency(MODELLED),
        help=f"the modelled vSphere task latency, seconds (default {MODELLED}; 'none': skip)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    result = anyio.run(main_async, args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
