"""``liverecovery demo --vms N``: a plan of N generated VMs in boot groups, on several simulated
ESX hosts, through our NFS server on loopback. ``demo --verify --vms N`` verifies that plan
instead: each VM booted as an isolated copy in its boot group, checked, and undone.

The VMs are written as sample backups (ESXi-style folders, sparse VMDKs holding known data);
a plan puts them in up to three boot groups (the first waits for its guests' heartbeats) and
round-robin onto up to four simulated hosts. Every VM is its own job: each powers on from the
backup, runs, and is storage-vMotioned to its host's local datastore. The summary says whether
every migrated disk equals its backup plus the guest's writes and whether the backups are
unchanged; exit code 0 only when all holds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.cli.demo import DEMO_PREFIX, _claim, demo_settings, parse_size, sweep_demo_residue
from liverecovery.cli.plan import follow_plan
from liverecovery.config import MiB
from liverecovery.io.threads import run_sync
from liverecovery.plan.model import BootGroup, GroupWait, Placement, Plan, PlanVm
from liverecovery.recovery.live import LiveRecovery
from liverecovery.sim.embedded import verify_disk
from liverecovery.sim.hosts import embedded_hosts
from liverecovery.testing.samples import sample_vm, tree_digests

__all__ = ["demo_plan", "demo_plan_verify", "run_plan_demo", "run_plan_verify_demo"]


def demo_plan(count: int, prefix: str = "demo") -> Plan:
    """``count`` VMs in up to three boot groups (db, app, web), round-robin on up to 4 hosts."""
    names = ("db", "app", "web")[: min(3, count)]
    groups = tuple(
        BootGroup(n, wait=GroupWait.HEARTBEAT if i == 0 else GroupWait.POWER_ON)
        for i, n in enumerate(names)
    )
    hosts = tuple(f"esx-sim-{i + 1}" for i in range(min(4, max(1, (count + 1) // 2))))
    vms = tuple(
        PlanVm(
            vm=f"{prefix}-{i + 1:03d}",
            group=names[i * len(names) // count],
            datastore="datastore1",
            esx_address="127.0.0.1",
        )
        for i in range(count)
    )
    return Plan(
        name=prefix,
        groups=groups,
        vms=vms,
        hosts=hosts,
        placement=Placement.ROUND_ROBIN,
        max_in_flight=8,
        source="demo",
    )


async def run_plan_demo(args: argparse.Namespace) -> int:
    """Run the generated plan; 0 when every VM completed, verified, and the backups unchanged."""
    size = parse_size(args.disk_size)
    plan = demo_plan(args.vms, args.vm if args.vm != "demo-vm" else "demo")
    await run_sync(sweep_demo_residue)
    with tempfile.TemporaryDirectory(prefix=DEMO_PREFIX) as tmp:
        work = Path(tmp)
        owner = await run_sync(_claim, work)
        settings = await run_sync(demo_settings, work, args)
        if not args.settings:  # N small VMs: 128 MiB of cache each, not the single demo's 1 GiB
            settings = attrs.evolve(settings, job_space_floor_bytes=128 * MiB)
        backup_root = work / "backup"
        for i, vm in enumerate(plan.vms):
            await run_sync(sample_vm(vm.vm, disk_sizes=(size,), seed=i).write, backup_root)
        before = await run_sync(tree_digests, backup_root)
        verified = True
        async with (
            DirectoryCatalog(backup_root) as catalog,
            embedded_hosts(work, catalog, hosts=plan.hosts, settings=settings) as env,
        ):
            async with LiveRecovery(env.settings, env.backends, builder=env.builder) as lr:
                run = await lr.run_plan(plan)
                if not args.json:
                    print(
                        f"plan {plan.name}: {len(plan.vms)} VMs in {len(plan.groups)} boot "
                        f"groups on {len(plan.hosts)} simulated ESX hosts",
                        file=sys.stderr,
                    )
                if args.json:  # the summary is printed once, below
                    code = 0 if (await run.wait())["state"] == "completed" else 1
                else:
                    code = await follow_plan(run, as_json=False)
                summary = run.summary()
            for job in lr.jobs():
                ref = job.summary().vm_ref
                if job.summary().state.value != "completed" or ref is None:
                    verified = False
                    continue
                esx, local = env.hosts.owner(ref)
                await esx.power_off(local)
                point = await catalog.restore_point(job.spec.vm)
                for index, disk in enumerate(point.disks):
                    reader = await catalog.open_disk(point, disk)
                    try:
                        ok = await verify_disk(esx, local, index, reader, esx.guest_writes(local))
                    finally:
                        await reader.aclose()
                    verified &= ok
        unchanged = await run_sync(tree_digests, backup_root) == before
        os.close(owner)
    result: dict[str, Any] = summary | {"verified": verified, "backup_unchanged": unchanged}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"verified: {verified}; backups unchanged: {unchanged}")
    return 0 if code == 0 and verified and unchanged else 1


async def demo_plan_verify(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The plan verification of the demo on the embedded environment; its result as JSON."""
    from liverecovery.cli.verify import _bootable_sample
    from liverecovery.verify.run import VerifyOptions

    size = parse_size(args.disk_size)
    plan = demo_plan(args.vms, args.vm if args.vm != "demo-vm" else "demo")
    settings = await run_sync(demo_settings, work, args)
    if not args.settings:
        settings = attrs.evolve(settings, job_space_floor_bytes=128 * MiB)
    backup_root = work / "backup"
    for vm in plan.vms:
        await run_sync(_bootable_sample(vm.vm, size).write, backup_root)
    before = await run_sync(tree_digests, backup_root)
    async with (
        DirectoryCatalog(backup_root) as catalog,
        embedded_hosts(work, catalog, hosts=plan.hosts, settings=settings) as env,
    ):
        for host in env.hosts.hosts.values():
            host.guest.heartbeat_delay_s = 0.3
        async with LiveRecovery(env.settings, env.backends, builder=env.builder) as lr:
            report = await lr.verify_plan(
                plan, options=VerifyOptions(report_dir=work / "report", poll_s=0.1)
            )
        hosts = env.hosts.hosts.values()
        left = {
            "vms": sorted(v.ref.name for h in hosts for v in h.vms.values()),
            "mounts": sorted(f"{h.name}:{m}" for h in hosts for m in h.mounts),
            "exports": sorted(env.server.exports()),
            "job_folders": sorted(p.name for p in (work / "results" / "jobs").glob("*")),
        }
    unchanged = await run_sync(tree_digests, backup_root) == before
    return {
        "report": report.to_json(),
        "markdown": report.to_markdown(),
        "left_behind": left,
        "backup_unchanged": unchanged,
        "passed": report.passed and unchanged and not any(left.values()),
    }


async def run_plan_verify_demo(args: argparse.Namespace) -> int:
    """``liverecovery demo --verify --vms N``: 0 when every VM passed, nothing was left behind
    and the backups are unchanged."""
    await run_sync(sweep_demo_residue)
    with tempfile.TemporaryDirectory(prefix=DEMO_PREFIX) as tmp:
        owner = await run_sync(_claim, Path(tmp))
        try:
            result = await demo_plan_verify(args, Path(tmp))
        finally:
            os.close(owner)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}))
    else:
        print(result["markdown"], end="")
        left = [f"{k}: {v}" for k, v in result["left_behind"].items() if v]
        print(
            f"plan verification of {args.vms} VMs: {'passed' if result['passed'] else 'FAILED'}; "
            f"left behind: {', '.join(left) or 'nothing'}; "
            f"backups unchanged: {result['backup_unchanged']}"
        )
    return 0 if result["passed"] else 1
