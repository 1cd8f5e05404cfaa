"""``liverecovery plan run|status|cancel``: many VMs in boot groups, from a plan file.

    liverecovery plan run plan.toml --vcenter vc.example --user admin --password-env VC_PW \\
        --backup /backups
    liverecovery plan run plan.toml --simulate --backup /backups   # simulated ESX hosts
    liverecovery plan status          # plan runs and plan verifications (verify --plan)
    liverecovery plan cancel [NAME]
    liverecovery plan resume plan.toml --vcenter ...   # after the process stopped
    liverecovery plan run plan.toml ... --node A --nodes A,B --shared-state s3://b/state
        # on each of several serving nodes: each runs its part, boot groups wait for all

The plan file's shape is in ``liverecovery.plan.parse``; its ``[settings]`` table applies, and
its ``[connection]`` table may hold ``vcenter``, ``user``, ``password_env``, ``backup``,
``insecure``, ``ca_file``, ``nfs_address`` (flags override). A plan with problems is refused
before anything starts, every problem listed with its line. On a terminal a table of the VMs
updates in place; otherwise one line per change; ``--json`` prints one summary at the end.
Exit code 0 when every VM completed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
import attrs

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.cli.signals import STOP_GRACE_S, hard_exit_after, stop_signals
from liverecovery.config import Settings, load_toml
from liverecovery.errors import JobStateError, SettingsError
from liverecovery.plan.model import Plan
from liverecovery.plan.nodes import check_run_id
from liverecovery.plan.parse import load_plan
from liverecovery.plan.runner import PlanRun
from liverecovery.plan.table import event_line, format_table
from liverecovery.recovery.control import ControlServer, request, socket_path
from liverecovery.recovery.live import LiveRecovery
from liverecovery.recovery.plan_progress import show_plan

__all__ = ["follow_plan", "register"]

_CONNECTION_KEYS = (
    "vcenter",
    "user",
    "password_env",
    "backup",
    "insecure",
    "ca_file",
    "nfs_address",
    "passkey_env",
)


def register(sub: Any) -> None:
    """Add the ``plan`` subcommand and its ``run``, ``status`` and ``cancel``."""
    plan = sub.add_parser("plan", help="recover many VMs in boot groups from a plan file")
    verbs = plan.add_subparsers(dest="plan_command", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="run a plan (see 'liverecovery plan run --help')")
    run.add_argument("plan_file", metavar="PLAN.toml")
    run.add_argument("--backup", help="backup root the plan's VMs are in")
    run.add_argument(
        "--simulate",
        action="store_true",
        help="run on simulated ESX hosts named as in the plan, in this process (no vCenter)",
    )
    run.add_argument("--vcenter", help="vCenter address")
    run.add_argument("--user")
    run.add_argument("--password-env", help="environment variable holding the password")
    run.add_argument("--insecure", action="store_true", help="skip TLS verification")
    run.add_argument("--ca-file", help="CA bundle to verify vCenter's certificate")
    run.add_argument("--nfs-address", help="the address the ESX hosts mount from")
    run.add_argument("--passkey-env", help="environment variable holding the restore passkey")
    run.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    run.add_argument(
        "--node", metavar="NAME", help="several serving nodes: this node's name (node_name)"
    )
    run.add_argument(
        "--nodes",
        metavar="A,B,...",
        help="several serving nodes: all of them, the same list on each (nodes); each runs the "
        "VMs whose ESX host ranks it first",
    )
    run.add_argument(
        "--shared-state",
        metavar="URL",
        help="where the nodes meet (shared_state): s3://bucket/prefix or a shared directory",
    )
    run.add_argument(
        "--run-id",
        help="the run's id (default: new; with --nodes derived from the plan's content, so "
        "every node agrees; give one to run the same plan again)",
    )
    run.set_defaults(handler=run_plan)
    resume = verbs.add_parser(
        "resume", help="resume the unfinished plans of a stopped process (vCenter)"
    )
    resume.add_argument(
        "plan_file", metavar="PLAN.toml", help="for its [settings] and [connection]"
    )
    for flag in (
        "--backup",
        "--vcenter",
        "--user",
        "--password-env",
        "--ca-file",
        "--nfs-address",
        "--passkey-env",
    ):
        resume.add_argument(flag)
    resume.add_argument("--insecure", action="store_true", help="skip TLS verification")
    resume.add_argument("--json", action="store_true", help="print one JSON summary per plan")
    resume.set_defaults(handler=resume_plan)
    for name, handler, help_text in (
        ("status", plan_status, "the plans and plan verifications of a running process"),
        (
            "cancel",
            plan_cancel,
            "cancel a running plan (no more groups start) or plan verification (every copy undone)",
        ),
    ):
        verb = verbs.add_parser(name, help=help_text)
        if name == "cancel":
            verb.add_argument("name", nargs="?", help="the plan's name or run id")
        verb.add_argument("--job-results-dir", help="the running process's job results folder")
        verb.add_argument("--settings", help="a TOML file whose [settings] name that folder")
        verb.add_argument("--json", action="store_true", help="print the raw JSON reply")
        verb.set_defaults(handler=handler)


def _connection(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """The plan file's ``[connection]`` table under the flags."""
    doc = load_toml(path, what="plan")
    table = doc.get("connection", {})
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [connection] must be a table")
    for key in table:
        if key not in _CONNECTION_KEYS:
            raise SettingsError(
                f"{path}: [connection]: unknown key {key!r} (known: {', '.join(_CONNECTION_KEYS)})"
            )
    found = dict(table)
    for key in _CONNECTION_KEYS:
        value = getattr(args, key, None)
        if value not in (None, False, ""):
            found[key] = value
    return found


def _passkey(conn: dict[str, Any]) -> str | None:
    """The restore passkey from the environment variable ``passkey_env`` names, if any."""
    env = conn.get("passkey_env")
    if not env:
        return None
    value = os.environ.get(str(env))
    if not value:
        raise SettingsError(f"--passkey-env: environment variable {env} is not set")
    return value


async def follow_plan(run: PlanRun, *, as_json: bool, out: TextIO | None = None) -> int:
    """Show the plan until it ends (a table on a terminal, else lines; with ``as_json`` only
    the summary); the exit code: 0 when every VM completed."""
    out = out or sys.stdout
    if as_json:
        summary = await run.wait()
    elif out.isatty():
        summary = await show_plan(run, file=out)
    else:
        async for event in run.events():
            print(event_line(event), file=out, flush=True)
        summary = await run.wait()
    if as_json:
        print(json.dumps(summary), file=out, flush=True)
    else:
        if run.part is not None:
            print(run.part.describe(), file=out)
        for line in format_table(run.rows()):
            print(line, file=out)
        print(f"plan {run.plan.name}: {summary['state']} in {summary['elapsed_s']:.1f}s", file=out)
        if summary["stopped"]:
            print(f"stopped: {summary['stopped']}", file=out)
        for row in run.rows():
            if row.error:
                print(f"vm {row.vm}: {row.error}", file=sys.stderr)
    return 0 if summary["state"] == "completed" else 1


@asynccontextmanager
async def _simulated(
    plan: Plan, settings: Settings, backup: Path
) -> AsyncIterator[tuple[LiveRecovery, Plan]]:
    """A LiveRecovery on simulated ESX hosts named as in the plan (VMs connect from loopback)."""
    from liverecovery.sim.hosts import embedded_hosts

    names = tuple(dict.fromkeys([*plan.hosts, *(v.host for v in plan.vms if v.host)]))
    plan = attrs.evolve(plan, vms=tuple(attrs.evolve(v, esx_address="127.0.0.1") for v in plan.vms))
    work = Path(settings.job_results_dir) / "simulated"
    async with (
        DirectoryCatalog(backup) as catalog,
        embedded_hosts(work, catalog, hosts=names, settings=settings) as env,
        LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
    ):
        yield lr, plan


@asynccontextmanager
async def _vcenter(
    plan: Plan, settings: Settings, conn: dict[str, Any], args: argparse.Namespace
) -> AsyncIterator[tuple[LiveRecovery, Plan]]:
    from liverecovery.cli.recover import RecoverConfig, production

    missing = [k for k in ("vcenter", "user", "password_env") if not conn.get(k)]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise SettingsError(f"{args.plan_file}: missing {flags} (or --simulate)")
    first_host = plan.hosts[0] if plan.hosts else next(v.host for v in plan.vms if v.host)
    config = RecoverConfig(
        vcenter=conn["vcenter"],
        user=conn["user"],
        password_env=conn["password_env"],
        host=first_host,
        backup=str(conn["backup"]),
        insecure=bool(conn.get("insecure", False)),
        ca_file=conn.get("ca_file"),
        nfs_address=conn.get("nfs_address"),
        settings=settings,
    )
    async with production(config, args) as (lr, _server):
        yield lr, plan


def _node_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` under ``--node``, ``--nodes`` and ``--shared-state``.

    :raises SettingsError: they do not fit together (naming the flags).
    """
    changes: dict[str, Any] = {}
    if args.node is not None:
        changes["node_name"] = args.node
    if args.nodes is not None:
        changes["nodes"] = tuple(n.strip() for n in args.nodes.split(",") if n.strip())
    if args.shared_state is not None:
        changes["shared_state"] = args.shared_state
    if not changes:
        return settings
    try:
        return attrs.evolve(settings, **changes)
    except SettingsError as exc:
        raise SettingsError(f"{args.plan_file} with --node/--nodes/--shared-state: {exc}") from None


async def run_plan(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan_file)
    settings = _node_settings(Settings.from_toml(args.plan_file), args)
    if args.run_id is not None:
        check_run_id(args.run_id)
    conn = _connection(args.plan_file, args)
    if not conn.get("backup"):
        raise SettingsError(f"{args.plan_file}: missing --backup (or backup in [connection])")
    backup = Path(conn["backup"])
    if not await anyio.Path(backup).exists():
        raise SettingsError(f"{backup}: the backup path does not exist")
    if args.simulate:
        context = _simulated(plan, settings, backup)
    else:
        context = _vcenter(plan, settings, conn, args)
    async with context as (lr, plan), anyio.create_task_group() as tg:
        if args.simulate:
            await tg.start(ControlServer(lr, socket_path(lr.settings.job_results_dir)).serve)
        run = await lr.run_plan(plan, passkey=_passkey(conn), run_id=args.run_id)
        if not args.json:
            print(
                f"plan {plan.name} (run {run.run_id}): {len(plan.vms)} VM(s) in "
                f"{len(plan.groups)} group(s)",
                file=sys.stderr,
            )
            if run.part is not None:
                print(run.part.describe(), file=sys.stderr)
        tg.start_soon(_cancel_on_signal, [run])
        code = await follow_plan(run, as_json=args.json)
        tg.cancel_scope.cancel()
    return code


async def _cancel_on_signal(runs: list[PlanRun]) -> None:
    """Ctrl-C (SIGTERM) cancels the plans: no more groups start, jobs not yet powered on roll
    back, VMs running from the backup are left running (``plan resume`` serves them again);
    a second signal leaves at once."""
    with stop_signals() as signals:
        stopping = False
        async for _ in signals:
            if stopping:
                hard_exit_after(0, lambda: "liverecovery: stopped; running VMs were left running")
                continue
            stopping = True
            print(
                "stopping: no more groups start; jobs not yet powered on roll back; VMs "
                "running from the backup are left running...",
                file=sys.stderr,
            )
            for run in runs:
                run.cancel()
            hard_exit_after(
                STOP_GRACE_S, lambda: "liverecovery: stopped; running VMs were left running"
            )


async def resume_plan(args: argparse.Namespace) -> int:
    """Resume the unfinished plans of a stopped process (vCenter only: simulated hosts do not
    outlive their process)."""
    settings = Settings.from_toml(args.plan_file)
    conn = _connection(args.plan_file, args)
    plan = load_plan(args.plan_file)
    async with _vcenter(plan, settings, conn, args) as (lr, _plan), anyio.create_task_group() as tg:
        runs = await lr.resume_plans(passkey=_passkey(conn))
        for error in lr.resume_errors:
            print(f"skipped: {error}", file=sys.stderr)
        if not runs:
            print("no unfinished plans", file=sys.stderr)
            tg.cancel_scope.cancel()
            return 0
        tg.start_soon(_cancel_on_signal, runs)
        codes = [await follow_plan(run, as_json=args.json) for run in runs]
        tg.cancel_scope.cancel()
    return max(codes)


def _results_dir(args: argparse.Namespace) -> Path:
    if args.settings:
        return Settings.from_toml(args.settings, table="settings").job_results_dir
    return Path(args.job_results_dir) if args.job_results_dir else Settings().job_results_dir


async def plan_status(args: argparse.Namespace) -> int:
    with anyio.fail_after(30):
        reply = await request(socket_path(_results_dir(args)), {"op": "plan_status"})
    if "error" in reply:
        raise JobStateError(str(reply["error"]))
    if args.json:
        print(json.dumps(reply))
        return 0
    from liverecovery.plan.runner import VmRow

    for summary in reply.get("plans", []):
        kind = " verification" if summary.get("kind") == "verification" else ""
        print(f"plan {summary['plan']}{kind} (run {summary['run_id']}): {summary['state']}")
        for line in format_table([VmRow(**row) for row in summary["vms"]]):
            print(f"  {line}")
    return 0


async def plan_cancel(args: argparse.Namespace) -> int:
    with anyio.fail_after(30):
        reply = await request(
            socket_path(_results_dir(args)), {"op": "plan_cancel", "plan": args.name}
        )
    if "error" in reply:
        raise JobStateError(str(reply["error"]))
    kind = " verification" if reply.get("kind") == "verification" else ""
    print(json.dumps(reply) if args.json else f"plan {reply['plan']}{kind}: {reply['state']}")
    return 0
