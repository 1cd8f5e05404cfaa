"""``liverecovery demo``: one complete live recovery on the embedded default, for real.

A sample backup (an ESXi-style VM folder whose monolithicSparse VMDK holds known data, written in
pure Python) is read by the directory catalog and recovered through our NFS server on
loopback by the simulated ESX host: mount, register, power on (boot reads), a guest that keeps
writing, storage vMotion into a local datastore, cleanup. The summary says whether the migrated
disks equal the backup plus every guest write, byte for byte, and whether the backup is unchanged.
Exit code 0 only when the job completed and both hold.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.catalog.opening import open_catalog
from liverecovery.cli.lines import print_states
from liverecovery.config import GiB, MiB, Settings, load_toml
from liverecovery.errors import LiveRecoveryError, SettingsError
from liverecovery.io.threads import run_sync
from liverecovery.job.events import StateChanged
from liverecovery.job.states import State
from liverecovery.recovery.live import LiveRecovery
from liverecovery.recovery.progress import show_progress
from liverecovery.sim.embedded import embedded_environment, verify_disk
from liverecovery.testing.samples import sample_vm, tree_digests

__all__ = [
    "DEMO_PREFIX",
    "demo_settings",
    "parse_size",
    "register",
    "run",
    "seconds",
    "sweep_demo_residue",
    "vm_count",
    "vm_name",
]


def parse_size(text: str) -> int:
    """``1G``, ``512M``, ``1T``, ``4096`` (bytes) to bytes. :raises SettingsError:"""
    units = {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise SettingsError(f"--disk-size {text!r}: expected a size like 1G or 512M") from None
    size = int(value * units[unit]) // 512 * 512
    if size < MiB:
        raise SettingsError(f"--disk-size {text!r}: must be at least 1M")
    return size


DEMO_PREFIX = "liverecovery-demo-"
_OWNER = ".owner.lock"


def _claim(work: Path) -> int:
    """Lock a new owner file in the demo's folder for the life of this process: written under
    a temporary name, locked, then renamed, so a present owner file is always locked by a live
    demo or left by a dead one. The kernel drops the lock when the process dies, even by
    SIGKILL."""
    tmp = work / ".owner.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, work / _OWNER)
    return fd


def sweep_demo_residue(
    tmp_root: str | os.PathLike[str] | None = None, *, unclaimed_age_s: float = 600.0
) -> list[Path]:
    """Remove the temporary folders of demos that were killed (``TemporaryDirectory`` never
    ran its cleanup). A folder whose owner file is locked belongs to a live demo and is left
    alone; one without an owner file is removed only when older than ``unclaimed_age_s`` (a
    demo starting right now has not claimed its folder yet). Returns the folders removed."""
    root = Path(tmp_root if tmp_root is not None else tempfile.gettempdir())
    removed: list[Path] = []
    for folder in sorted(root.glob(f"{DEMO_PREFIX}*")):
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        try:
            fd = os.open(folder / _OWNER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.time() - info.st_mtime > unclaimed_age_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            continue
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live demo
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


def register(sub: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo", help="recover a generated sample backup on the embedded default, for real"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary")
    parser.add_argument("--vm", type=vm_name, default="demo-vm", help="name of the sample VM")
    parser.add_argument(
        "--disk-size", default="1G", metavar="SIZE", help="sample disk size (default 1G)"
    )
    parser.add_argument(
        "--serve-seconds",
        type=seconds,
        default=None,
        help="how long the VM runs from the backup before its storage vMotion (default 1)",
    )
    parser.add_argument(
        "--settings",
        metavar="FILE",
        help="a TOML file whose [settings] table applies (the NFS server stays on loopback)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="verify the sample backup instead (boot it isolated, check it, undo everything); "
        "with --vms N: verify a plan of N VMs in its boot groups",
    )
    parser.add_argument(
        "--backup",
        metavar="PATH_OR_URL",
        help="recover this backup (a folder or s3://bucket/prefix; --vm picks the VM when it "
        "holds several) instead of a generated sample",
    )
    parser.add_argument(
        "--vms",
        type=vm_count,
        default=None,
        metavar="N",
        help="recover N generated VMs as a plan in boot groups on several simulated ESX hosts",
    )
    parser.set_defaults(handler=run)


def vm_count(text: str) -> int:
    """argparse type of ``--vms``: 1 to 1000 VMs."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected a number of VMs from 1 to 1000, got {text!r}")
    return value


def seconds(text: str) -> float:
    """argparse type of ``--serve-seconds``: a finite number of seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}")
    return value


def vm_name(text: str) -> str:
    """argparse type of ``--vm``: a name the sample backup can use as its folder name."""
    if not text.strip() or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot name a VM folder: no '/', '\\', NUL, '.' or '..'"
        )
    if len(text) > 80:
        raise argparse.ArgumentTypeError("a VM name has at most 80 characters (vSphere's limit)")
    return text


def demo_settings(work: Path, args: argparse.Namespace) -> Settings:
    """The demo's settings: its defaults, under the ``[settings]`` of ``--settings FILE``, under
    ``--serve-seconds``."""
    flags: dict[str, Any] = {}
    if args.serve_seconds is not None:
        flags["serve_before_migrate_s"] = args.serve_seconds
    defaults: dict[str, Any] = {
        "job_results_dir": str(work / "results"),
        "migration_trigger": "delay",
        "serve_before_migrate_s": 1.0,
        "progress_interval_s": 0.2,
        # A demo VM is small: ask for 1 GiB of free cache space, not the 20 GiB floor.
        "job_space_floor_bytes": 1 << 30,
    }
    if not args.settings:
        return Settings.from_mapping(defaults | flags, source="demo")
    doc = load_toml(args.settings, what="settings")
    table = doc.get("settings", {})
    if not isinstance(table, dict):
        raise SettingsError(f"{args.settings}: [settings] must be a table")
    Settings.from_toml(args.settings)  # the file's own errors, named as in any other command
    return Settings.from_mapping(defaults | table | flags, source=str(args.settings))


async def run(args: argparse.Namespace) -> int:
    """Run the demo job; returns 0 when it completed, verified and left the backup unchanged."""
    modes = [
        flag
        for flag, given in (
            ("--verify", getattr(args, "verify", False)),
            ("--vms", args.vms is not None),
            ("--backup", getattr(args, "backup", None) is not None),
        )
        if given
    ]
    if modes == ["--verify", "--vms"]:
        from liverecovery.cli.demo_plan import run_plan_verify_demo

        return await run_plan_verify_demo(args)
    if len(modes) > 1:
        print(
            f"liverecovery: error: demo {' and '.join(modes)} cannot be combined: each is its "
            "own demo (to verify or plan a backup of yours: liverecovery verify / plan run)",
            file=sys.stderr,
        )
        return 2
    if args.vms is not None:
        from liverecovery.cli.demo_plan import run_plan_demo

        return await run_plan_demo(args)
    size = parse_size(args.disk_size)
    if getattr(args, "verify", False):
        from liverecovery.cli.verify import run_demo_verify

        return await run_demo_verify(args, size)
    started = time.monotonic()
    marks: dict[str, float] = {}
    fetched_before_power_on = 0
    await run_sync(sweep_demo_residue)
    with tempfile.TemporaryDirectory(prefix=DEMO_PREFIX) as tmp:
        work = Path(tmp)
        owner = await run_sync(_claim, work)  # held until the folder is removed
        settings = await run_sync(demo_settings, work, args)
        backup_root = work / "backup"
        vm = args.vm
        catalog: DirectoryCatalog | ObjectCatalog
        if getattr(args, "backup", None):
            catalog = open_catalog(args.backup, settings)
            vm = await _backup_vm(catalog, args.vm)
            before = await _fingerprint(catalog)
        else:
            await run_sync(sample_vm(vm, disk_sizes=(size,)).write, backup_root)
            catalog = DirectoryCatalog(backup_root)
            before = await _fingerprint(catalog)
        point = await catalog.restore_point(vm)
        if getattr(args, "backup", None):
            size = sum(d.capacity_bytes for d in point.disks)
        async with embedded_environment(work, catalog, settings=settings) as env:
            async with LiveRecovery(env.settings, env.backends, builder=env.builder) as lr:
                job = await lr.start(env.spec(vm))

                async def watch() -> None:
                    nonlocal fetched_before_power_on
                    async for event in job.events():
                        if isinstance(event, StateChanged):
                            marks[event.state.value] = time.monotonic() - started
                            if event.state is State.SERVING:
                                fetched_before_power_on = job.stats.bytes_fetched

                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch)
                    live_lines = not args.json and not sys.stderr.isatty()
                    if not args.json and sys.stderr.isatty():
                        tg.start_soon(show_progress, job)
                    elif live_lines:
                        tg.start_soon(print_states, job)
                    try:
                        summary = await job.wait()
                        error = ""
                    except LiveRecoveryError as exc:
                        summary, error = job.summary(), str(exc)
            verified = False
            writes = []
            if summary.state is State.COMPLETED and summary.vm_ref is not None:
                # The recovered VM keeps running; shut the simulated guest down to compare.
                await env.esx.power_off(summary.vm_ref)
                writes = env.esx.guest_writes(summary.vm_ref)
                verified = True
                for index, disk in enumerate(point.disks):
                    reader = await catalog.open_disk(point, disk)
                    try:
                        ok = await verify_disk(env.esx, summary.vm_ref, index, reader, writes)
                    finally:
                        await reader.aclose()
                    verified &= ok
        unchanged = await _fingerprint(catalog) == before
        await catalog.aclose()
        os.close(owner)
    stats = job.stats
    result = summary.to_json() | {
        "time_to_power_on_s": round(marks.get("serving", 0.0), 6),
        "backup_bytes_read_before_power_on": fetched_before_power_on,
        "bytes_migrated": stats.bytes_migrated,
        "guest_bytes_written": sum(len(w.data) for w in writes),
        "verified": verified,
        "backup_unchanged": unchanged,
        "disk_size": size,
        "elapsed_s": round(time.monotonic() - started, 6),
        "error": error,
    }
    if args.json:
        print(json.dumps(result))
    else:
        if not live_lines:  # the progress bar showed them: list them once it is gone
            for state in summary.states_visited[1:]:
                print(f"{marks.get(state.value, 0.0):8.3f}s  {state}")
        print(
            f"job {summary.job_id}: {summary.state.value} in {result['elapsed_s']:.2f}s; "
            f"powered on after {result['time_to_power_on_s']:.2f}s having read "
            f"{fetched_before_power_on / MiB:.1f} MiB of a {size / GiB:.1f} GiB disk; "
            f"{len(writes)} guest writes; verified: {verified}; backup unchanged: {unchanged}"
        )
        if error:
            print(f"error: {error}", file=sys.stderr)
    ok = summary.state is State.COMPLETED and verified and unchanged
    return 0 if ok else 1


async def _backup_vm(catalog: DirectoryCatalog | ObjectCatalog, wanted: str) -> str:
    """The VM of ``--backup`` to recover: ``--vm`` when given, else its only VM."""
    names = list(await catalog.vm_names())
    if wanted in names:
        return wanted
    if wanted == "demo-vm" and len(names) == 1:
        return names[0]
    held = ", ".join(names) or "no VMs"
    raise SettingsError(
        f"{catalog.url if isinstance(catalog, ObjectCatalog) else catalog.root}: "
        f"holds {held}: choose one with --vm"
    )


async def _fingerprint(catalog: DirectoryCatalog | ObjectCatalog) -> dict[str, object]:
    """What proves the backup unchanged: each file's SHA-256, each object's size and ETag."""
    if isinstance(catalog, ObjectCatalog):
        return dict(await catalog.object_tags())
    return dict(await run_sync(tree_digests, catalog.root))
