"""``liverecovery jobs`` and ``liverecovery cancel ID``: talk to a running process."""

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
