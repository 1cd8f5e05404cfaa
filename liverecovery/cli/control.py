"""``liverecovery jobs``, ``status [ID]``, ``cancel ID``, ``stop ID [--power-off]`` and
``migrate-now ID``: talk to a running process through its control socket."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anyio

from liverecovery.config import Settings
from liverecovery.errors import JobStateError
from liverecovery.recovery.control import request, socket_path

__all__ = ["register"]


def _results_dir(args: argparse.Namespace) -> Path:
    if args.settings:
        return Settings.from_toml(args.settings, table="settings").job_results_dir
    return Path(args.job_results_dir) if args.job_results_dir else Settings().job_results_dir


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job-results-dir", help="the running process's job results folder")
    parser.add_argument("--settings", help="a TOML file whose [settings] name that folder")
    parser.add_argument("--json", action="store_true", help="print the raw JSON reply")


def register(sub: Any) -> None:
    """Add the ``jobs`` and ``cancel`` subcommands."""
    jobs = sub.add_parser("jobs", help="list the jobs of a running liverecovery process")
    _common(jobs)
    jobs.set_defaults(handler=run_jobs)
    cancel = sub.add_parser("cancel", help="cancel a job of a running process and roll it back")
    cancel.add_argument("job_id", metavar="ID")
    _common(cancel)
    cancel.set_defaults(handler=run_cancel)
    status = sub.add_parser("status", help="where the jobs of a running process stand")
    status.add_argument("job_id", metavar="ID", nargs="?")
    _common(status)
    status.set_defaults(handler=run_status)
    stop = sub.add_parser(
        "stop",
        help="stop a job; once its VM runs from the backup, --power-off powers it off and "
        "undoes everything",
    )
    stop.add_argument("job_id", metavar="ID")
    stop.add_argument(
        "--power-off",
        action="store_true",
        help="power off and unregister the VM running from the backup, then unpublish, "
        "unmount and unexport (required once the VM runs)",
    )
    _common(stop)
    stop.set_defaults(handler=run_stop)
    migrate = sub.add_parser("migrate-now", help="start or retry a job's storage vMotion now")
    migrate.add_argument("job_id", metavar="ID")
    _common(migrate)
    migrate.set_defaults(handler=run_migrate_now)


async def run_jobs(args: argparse.Namespace) -> int:
    with anyio.fail_after(30):
        reply = await request(socket_path(_results_dir(args)), {"op": "jobs"})
    if args.json:
        print(json.dumps(reply))
    else:
        for job in reply.get("jobs", []):
            print(f"{job['job_id']}  {job['state']:<12}  {job['vm']}")
    return 0


async def run_cancel(args: argparse.Namespace) -> int:
    reply = await request(socket_path(_results_dir(args)), {"op": "cancel", "job": args.job_id})
    if "error" in reply:
        raise JobStateError(str(reply["error"]))
    print(json.dumps(reply) if args.json else f"{reply['job_id']}: {reply['state']}")
    return 0


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


async def run_status(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"op": "status"}
    if args.job_id:
        req["job"] = args.job_id
    with anyio.fail_after(30):
        reply = await request(socket_path(_results_dir(args)), req)
    if "error" in reply:
        raise JobStateError(str(reply["error"]))
    if args.json:
        print(json.dumps(reply))
        return 0
    for job in reply.get("jobs", []):
        line = (
            f"{job['job_id']}  {job['state']:<12}  {job['vm']}  "
            f"{job['seconds_in_state']:.0f} s in state  served {_size(job['bytes_served'])}  "
            f"restored {_size(job['bytes_restored'])}/{_size(job['bytes_to_restore'])}"
        )
        if job.get("running_from_backup"):
            line += "  (running from the backup)"
        print(line)
        if job.get("last_warning"):
            print(f"    last warning: {job['last_warning']}")
    return 0


async def run_stop(args: argparse.Namespace) -> int:
    reply = await request(
        socket_path(_results_dir(args)),
        {"op": "stop", "job": args.job_id, "power_off": bool(args.power_off)},
    )
    if "error" in reply:
        raise JobStateError(str(reply["error"]))
    print(json.dumps(reply) if args.json else f"{reply['job_id']}: {reply['state']}")
    return 0


async def run_migrate_now(args: argparse.Namespace) -> int:
    with anyio.fail_after(30):
        reply = await request(
            socket_path(_results_dir(args)), {"op": "migrate_now", "job": args.job_id}
        )
    if "error" in reply:
        raise JobStateError(str(reply["error"]))
    print(json.dumps(reply) if args.json else f"{reply['job_id']}: migrating ({reply['state']})")
    return 0
