"""``liverecovery demo``: one complete recovery job on the embedded default backends.

It generates a sample backup, recovers it, and prints progress on a terminal (or one JSON
summary with ``--json``). The exit code is 0 only when the job completed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

from liverecovery.config import GiB, Settings
from liverecovery.errors import LiveRecoveryError
from liverecovery.job.events import CompensationRan, Progress, StateChanged
from liverecovery.job.spec import RecoverySpec
from liverecovery.recovery import LiveRecovery
from liverecovery.testing.memory import memory_backends

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run one complete live recovery of a generated sample backup"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary")
    parser.add_argument("--vm", default="demo-vm", help="name of the sample VM")
    parser.add_argument(
        "--disk-size", type=int, default=16, metavar="GIB", help="sample disk size in GiB"
    )
    parser.set_defaults(handler=run)


def _bar(done: int, total: int, width: int = 30) -> str:
    frac = done / total if total else 0.0
    filled = int(frac * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac:6.1%}"


async def run(args: argparse.Namespace) -> int:
    """Run the demo job; returns 0 when it completed."""
    backends, _faults = memory_backends(hosts=("esx-demo",))
    catalog: Any = backends.catalog
    backup = catalog.add_vm(args.vm, disk_sizes=(args.disk_size * GiB,))
    digests_before = {name: d.sha256() for name, d in backup.disks.items()}
    tty = sys.stderr.isatty() and not args.json
    started = time.monotonic()
    power_on_s: float | None = None
    with tempfile.TemporaryDirectory(prefix="liverecovery-demo-") as results:
        settings = Settings(
            job_results_dir=results, nfs_address="127.0.0.1", migration_trigger="delay"
        )
        async with LiveRecovery(settings, backends) as lr:
            job = await lr.start(
                RecoverySpec(vm=args.vm, esx_host="esx-demo", datastore="datastore1")
            )
            async for event in job.events():
                if isinstance(event, StateChanged):
                    if event.previous.value == "powering_on":
                        power_on_s = time.monotonic() - started
                    if not args.json:
                        print(f"{event.at:8.3f}s  {event.state.value}", file=sys.stderr)
                elif isinstance(event, Progress) and tty:
                    print(
                        f"          restore {_bar(event.bytes_restored, event.bytes_total)}",
                        file=sys.stderr,
                    )
                elif isinstance(event, CompensationRan) and not args.json:
                    status = f"failed: {event.error}" if event.error else "done"
                    print(f"          {event.name}: {status}", file=sys.stderr)
            try:
                summary = await job.wait()
                error = ""
            except LiveRecoveryError as exc:
                summary, error = job.summary(), str(exc)
    unchanged = all(backup.disks[n].sha256() == h for n, h in digests_before.items())
    result = summary.to_json() | {
        "backend": "memory",
        "time_to_power_on_s": round(power_on_s, 6) if power_on_s is not None else None,
        "elapsed_s": round(time.monotonic() - started, 6),
        "backup_unchanged": unchanged,
        "error": error,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"job {summary.job_id}: {summary.state.value} "
            f"in {result['elapsed_s']:.3f}s; backup unchanged: {unchanged}"
        )
    return 0 if summary.state.value == "completed" and unchanged else 1
