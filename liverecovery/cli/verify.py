"""``liverecovery verify``: prove a restore point boots, isolated, and leave nothing behind.

    liverecovery verify BACKUP --vm web01 --vcenter vc.example.com --user admin \\
        --password-env VC_PASSWORD --host esx01.example.com \\
        --isolated-network verify-pg --check heartbeat --check ip --check tcp:22 \\
        --check "guest-command:/usr/bin/systemctl is-system-running" \\
        --guest-user-env GUEST_USER --guest-password-env GUEST_PASSWORD

The VM is powered on from the backup as ``<vm>-verify-<job id>`` with its NICs disconnected
(or on ``--isolated-network``), checked, then powered off and undone whatever happened. The
report (``report.json``, ``report.md``, ``screenshot.png``) goes to ``--report-dir`` or the job
results folder. Exit code 0 only when every required check passed and everything was undone;
1 when a check failed or the verification was refused. Ctrl-C stops the checks and cleans up.
``liverecovery demo --verify`` runs the same path on the embedded environment.

The plan form verifies every VM of a plan in its boot groups, each as an isolated copy, and
writes one report for the plan (``plan-report.json``, ``plan-report.md``, one folder per VM)::

    liverecovery verify /backups --plan plan.toml --vcenter vc.example.com --user admin \\
        --password-env VC_PASSWORD --check heartbeat
    liverecovery verify /backups --plan plan.toml --simulate   # simulated ESX hosts
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import attrs

from liverecovery.backends import GuestCredentials
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.cli.recover import RecoverConfig, _common, production
from liverecovery.config import MiB, Settings
from liverecovery.errors import SettingsError, VerificationRefusedError
from liverecovery.io.threads import run_sync
from liverecovery.plan.parse import load_plan
from liverecovery.plan.verify_report import PlanVerificationReport
from liverecovery.recovery.control import ControlServer, socket_path
from liverecovery.recovery.live import LiveRecovery
from liverecovery.sim.embedded import embedded_environment
from liverecovery.testing.disk_images import mbr_disk
from liverecovery.testing.samples import SampleVm, pattern_runs, sample_spans, tree_digests
from liverecovery.verify.checks import Check, default_checks, parse_check
from liverecovery.verify.report import VerificationReport
from liverecovery.verify.run import VerifyOptions, refusals

__all__ = ["demo_verify", "register"]

NOT_MIGRATED = "(not migrated)"
"""The destination datastore a verification's spec names: its copy never moves."""


def _credentials(args: argparse.Namespace) -> GuestCredentials | None:
    """Guest credentials from the environment variables the flags name (never the flags)."""
    user_env, password_env = args.guest_user_env, args.guest_password_env
    if not user_env and not password_env:
        return None
    if not user_env or not password_env:
        raise SettingsError("give both --guest-user-env and --guest-password-env")
    values = {env: os.environ.get(env) for env in (user_env, password_env)}
    if missing := [env for env, value in values.items() if not value]:
        raise SettingsError(f"environment variable {', '.join(missing)} is not set")
    return GuestCredentials(str(values[user_env]), str(values[password_env]))


def _checks(args: argparse.Namespace) -> list[Check]:
    timeout = args.check_timeout or 0.0
    return [parse_check(text, timeout_s=timeout) for text in args.check or ()]


def _options(args: argparse.Namespace) -> VerifyOptions:
    return VerifyOptions(
        isolated_network=args.isolated_network,
        network_reachable=args.network_reachable,
        credentials=_credentials(args),
        report_dir=Path(args.report_dir) if args.report_dir else None,
    )


def _print(report: VerificationReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json()))
        return
    verdict = "passed" if report.passed else "FAILED"
    for c in report.checks:
        flag = "" if c.required else " (optional)"
        print(f"  {c.name}{flag}: {c.outcome.value} in {c.duration_s:.2f}s: {c.detail}")
    rtt = report.time_to_heartbeat_s
    print(
        f"verification {report.job_id}: {report.vm} at {report.point_id} {verdict}; time to "
        f"heartbeat: {'none' if rtt is None else f'{rtt:.1f}s'}; cleanup: "
        f"{'clean' if report.cleanup_clean else 'NOT clean'}; report: {report.report_dir}"
    )
    for line in report.failures:
        print(f"  why: {line}", file=sys.stderr)


async def _with_signals(verify: Any) -> VerificationReport | None:
    """Run ``verify()``; Ctrl-C or SIGTERM cancels it (its cleanup still runs): None then."""
    result: list[VerificationReport] = []
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    print("stopping: powering the verification VM off...", file=sys.stderr)
                    scope.cancel()
                    return

        tg.start_soon(on_signal)
        with anyio.CancelScope() as scope:
            result.append(await verify())
        tg.cancel_scope.cancel()
    return result[0] if result else None


async def run_verify(args: argparse.Namespace) -> int:
    if args.plan:
        return await run_verify_plan(args)
    if args.simulate:
        raise SettingsError("--simulate verifies a plan: give --plan PLAN.toml")
    config = RecoverConfig.from_args(args, need_job=False)
    missing = [f for f, v in (("BACKUP", config.backup), ("--vm", config.vm)) if not v]
    if missing:
        raise SettingsError(f"verify needs {' and '.join(missing)}")
    if not await anyio.Path(config.backup).exists():
        raise SettingsError(f"{config.backup}: the backup path does not exist")
    checks, options = _checks(args), _options(args)
    if problems := refusals(checks or default_checks(network=bool(args.isolated_network)), options):
        raise VerificationRefusedError("verification refused: " + "; ".join(problems))
    config = attrs.evolve(config, datastore=config.datastore or NOT_MIGRATED)
    spec = config.spec()
    async with production(config, args) as (lr, _server):
        report = await _with_signals(lambda: lr.verify(spec, checks, options))
    if report is None:
        print("verification cancelled; everything was undone", file=sys.stderr)
        return 1
    _print(report, args.json)
    return 0 if report.passed else 1


def _print_plan(report: PlanVerificationReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json()))
        return
    for v in report.vms:
        tth = v.time_to_heartbeat_s
        heartbeat = f"heartbeat after {tth:.1f}s" if tth is not None else "no heartbeat"
        print(f"  {v.vm} (group {v.group}, host {v.host}): {v.outcome}; {heartbeat}")
        why = (v.report.failures if v.report is not None else []) or (
            [v.reason] if v.reason else []
        )
        for line in why if v.outcome != "passed" else []:
            print(f"    why: {line}", file=sys.stderr)
    rtt = report.slowest_time_to_heartbeat_s
    print(
        f"plan verification {report.plan} (run {report.run_id}): "
        f"{'passed' if report.passed else 'FAILED'}; {report.count('passed')}/{len(report.vms)} "
        f"VMs passed, {report.count('not_run')} not run; measured recovery time: "
        f"{'not every VM booted' if rtt is None else f'{rtt:.1f}s'}; report: {report.report_dir}"
    )
    if report.stopped:
        print(f"  stopped: {report.stopped}", file=sys.stderr)


async def run_verify_plan(args: argparse.Namespace) -> int:
    """``liverecovery verify --plan PLAN.toml``: exit code 0 only when every required check of
    every VM passed."""
    from liverecovery.cli.plan import _connection, _passkey, _simulated, _vcenter

    if args.vm:
        raise SettingsError("give either --vm (one VM) or --plan (every VM of a plan), not both")
    args.plan_file = args.plan
    plan = load_plan(args.plan)
    settings = Settings.from_toml(args.plan)
    conn = _connection(args.plan, args)
    if not conn.get("backup"):
        raise SettingsError(f"{args.plan}: missing BACKUP (or backup in [connection])")
    backup = Path(conn["backup"])
    if not await anyio.Path(backup).exists():
        raise SettingsError(f"{backup}: the backup path does not exist")
    checks, options = _checks(args), _options(args)
    if problems := refusals(checks or default_checks(network=bool(args.isolated_network)), options):
        raise VerificationRefusedError("verification refused: " + "; ".join(problems))
    passkey = _passkey(conn)
    if args.simulate:
        context = _simulated(plan, settings, backup)
    else:
        context = _vcenter(plan, settings, conn, args)
    cancel = anyio.Event()
    async with context as (lr, plan), anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    print("stopping: powering the verification VMs off...", file=sys.stderr)
                    cancel.set()

        tg.start_soon(on_signal)
        if args.simulate:  # with vCenter, ``production`` listens already
            await tg.start(ControlServer(lr, socket_path(lr.settings.job_results_dir)).serve)
        report = await lr.verify_plan(plan, checks, options, cancel=cancel, passkey=passkey)
        tg.cancel_scope.cancel()
    _print_plan(report, args.json)
    return 0 if report.passed else 1


def register(sub: Any) -> None:
    """Add the ``verify`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "verify", help="prove a restore point boots, isolated, and leave nothing behind"
    )
    parser.add_argument("backup", nargs="?", help="backup root, VM folder or .ova")
    parser.add_argument("--vm", help="the VM to verify")
    parser.add_argument(
        "--plan",
        metavar="PLAN.toml",
        help="verify every VM of this plan in its boot groups (instead of --vm)",
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="with --plan: run on simulated ESX hosts named as in the plan (no vCenter)",
    )
    parser.add_argument("--point", help="restore point id (default: the newest)")
    parser.add_argument("--passkey-env", help="environment variable holding the passkey")
    parser.add_argument("--folder", help="the VM folder to register the copy in")
    parser.add_argument("--resource-pool", help="the resource pool to register the copy in")
    parser.add_argument(
        "--isolated-network",
        metavar="PORTGROUP",
        help="connect every NIC to this port group (default: NICs disconnected)",
    )
    parser.add_argument(
        "--network-reachable",
        action="store_true",
        help="this machine can reach the isolated network (tcp checks need it)",
    )
    parser.add_argument(
        "--check",
        action="append",
        metavar="CHECK",
        help="heartbeat, ip, tcp:PORT, guest-command:PROGRAM [ARGS], screenshot, partitions; "
        "'?' after the kind makes it optional (repeatable; default: partitions, heartbeat, "
        "ip on an isolated network, screenshot)",
    )
    parser.add_argument(
        "--check-timeout", type=float, metavar="S", help="seconds each check may take"
    )
    parser.add_argument("--guest-user-env", help="environment variable holding the guest user")
    parser.add_argument(
        "--guest-password-env", help="environment variable holding the guest password"
    )
    parser.add_argument("--report-dir", help="where the report goes (default: the results)")
    _common(parser)
    parser.set_defaults(handler=run_verify, datastore=None)


# -- the demo's verification ------------------------------------------------------------------


def _bootable_sample(name: str, size: int) -> SampleVm:
    """A sample VM whose disk holds an MBR with an ext4 root and a swap partition."""
    sectors = size // 512
    root = (2048, sectors // 2 - 2048)
    swap = (sectors // 2, sectors // 2 - 2048)
    table = mbr_disk([(0x83, *root, "ext4"), (0x82, *swap, "swap")])
    runs: dict[int, Any] = dict(pattern_runs(sample_spans(size, 0, head=2 * MiB), 0))
    for offset in [o for o in runs if o < 2 * MiB]:
        del runs[offset]  # keep the partition table's sectors to itself
    runs.update(table)
    return SampleVm(name, disks=((size, runs),))


async def demo_verify(args: argparse.Namespace, work: Path, size: int) -> dict[str, Any]:
    """The demo's verification on the embedded environment; its result as JSON."""
    from liverecovery.cli.demo import demo_settings

    settings = await run_sync(demo_settings, work, args)
    backup_root = work / "backup"
    await run_sync(_bootable_sample(args.vm, size).write, backup_root)
    before = await run_sync(tree_digests, backup_root)
    catalog = DirectoryCatalog(backup_root)
    started = time.monotonic()
    async with embedded_environment(work, catalog, settings=settings) as env:
        env.esx.guest.heartbeat_delay_s = 0.5
        async with LiveRecovery(env.settings, env.backends, builder=env.builder) as lr:
            report = await lr.verify(
                env.spec(args.vm), options=VerifyOptions(report_dir=work / "report", poll_s=0.1)
            )
        left = {
            "vms": [v.ref.name for v in env.esx.vms.values()],
            "mounts": sorted(env.esx.mounts),
            "exports": sorted(env.server.exports()),
            "job_folders": sorted(p.name for p in (work / "results" / "jobs").glob("*")),
        }
    await catalog.aclose()
    unchanged = await run_sync(tree_digests, backup_root) == before
    return {
        "report": report.to_json(),
        "markdown": report.to_markdown(),
        "left_behind": left,
        "backup_unchanged": unchanged,
        "elapsed_s": round(time.monotonic() - started, 3),
        "passed": report.passed and unchanged and not any(left.values()),
    }


async def run_demo_verify(args: argparse.Namespace, size: int) -> int:
    """``liverecovery demo --verify``."""
    from liverecovery.cli.demo import DEMO_PREFIX

    with tempfile.TemporaryDirectory(prefix=DEMO_PREFIX) as tmp:
        result = await demo_verify(args, Path(tmp), size)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}))
    else:
        print(result["markdown"], end="")
        left = [f"{k}: {v}" for k, v in result["left_behind"].items() if v]
        print(
            f"verification of {args.vm}: {'passed' if result['passed'] else 'FAILED'} in "
            f"{result['elapsed_s']:.2f}s; left behind: {', '.join(left) or 'nothing'}; "
            f"backup unchanged: {result['backup_unchanged']}"
        )
    return 0 if result["passed"] else 1
