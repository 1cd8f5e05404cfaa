"""``liverecovery browse``: a restore point's VM folder, exported read-only in flat form.

For file-level browsing and verification: descriptors plus ``-flat.vmdk`` files served on
demand through the cache, whatever the backup's disk format. Nothing can be written. It holds a
live browse session on the VM, so a live recovery of the same VM is refused while it runs, in
any process sharing the settings' ``job_results_dir``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import attrs

from liverecovery.backends import RestorePoint, StagingContext
from liverecovery.catalog.opening import open_catalog
from liverecovery.cli.inspect import NO_VMS
from liverecovery.cli.serve import _listen
from liverecovery.cli.signals import stop_signals, wait_for_stop_signal
from liverecovery.config import Settings
from liverecovery.errors import SettingsError
from liverecovery.io.threads import run_sync
from liverecovery.job.sessions import SessionKind, SessionRegistry
from liverecovery.recovery.assembly import Assembly, assemble
from liverecovery.spec import RecoverySpec

__all__ = ["register", "run", "sweep_browse_residue"]


def register(sub: Any) -> None:
    """Add the ``browse`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "browse", help="export a restore point's VM folder read-only, in flat form"
    )
    parser.add_argument("backup", help="backup root, VM folder, .ova or s3://bucket/prefix")
    parser.add_argument("--vm", help="the VM (default: the only one)")
    parser.add_argument("--point", help="restore point id (default: the newest)")
    parser.add_argument("--listen", type=_listen, default=("0.0.0.0", 2049), metavar="HOST:PORT")
    parser.add_argument("--allow", action="append", required=True, metavar="ADDR")
    parser.add_argument("--settings", help="a TOML file whose [settings] apply")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; prints the ``nfs://`` URL."""
    settings = Settings.from_toml(args.settings, table="settings") if args.settings else Settings()
    host, port = args.listen
    args.port_flags = {port: "--listen HOST:PORT"}
    # The NFS server listens on --listen alone (the portmapper shares it), with no grace period.
    settings = attrs.evolve(
        settings, nfs_listen_host=host, nfs_port=port, portmap_port=port, nfs_grace_s=0.0
    )
    async with open_catalog(args.backup, settings) as catalog:
        vm = args.vm
        if vm is None:
            names = list(await catalog.vm_names())
            if not names:
                raise SettingsError(f"{args.backup}: {NO_VMS}")
            if len(names) != 1:
                raise SettingsError(
                    f"{args.backup} holds VMs {', '.join(names)}: choose one with --vm"
                )
            vm = names[0]
        point = await catalog.restore_point(vm, args.point)
        browse_id = f"browse-{uuid.uuid4().hex[:8]}"
        sessions = SessionRegistry.for_settings(settings)
        sessions.acquire(vm, SessionKind.BROWSE, browse_id)
        try:
            await run_sync(sweep_browse_residue, settings, sessions)
            async with assemble(settings, vsphere=None, catalog=catalog, read_only=True) as parts:
                await _serve(args, parts, vm, point, browse_id)
        finally:
            sessions.release(vm, browse_id)
    return 0


def sweep_browse_residue(settings: Settings, sessions: SessionRegistry) -> list[Path]:
    """Remove the job folders of browses whose process died (a SIGKILL skips ``discard``).

    A browse holds its session before it builds its folder and removes the folder before it
    releases the session, so a ``browse-*`` folder whose owner holds no live session belongs to
    a dead process. Dead holder records were swept when this browse's session opened.
    """
    jobs = Path(settings.job_results_dir) / "jobs"
    if not jobs.is_dir():
        return []
    live = sessions.live_owners()
    removed = []
    for folder in sorted(jobs.glob("browse-*")):
        if folder.name not in live and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


async def _serve(
    args: argparse.Namespace, parts: Assembly, vm: str, point: RestorePoint, browse_id: str
) -> None:
    """Stage the read-only folder, export it and wait for a stop signal; discard it after."""
    folder = f"{vm}-{point.point_id}"
    ctx = StagingContext(
        job_id=browse_id,
        spec=RecoverySpec(vm=vm, esx_host="browse", datastore="browse"),
        point=point,
        settings=parts.settings,
        catalog=parts.catalog,
        datastore="browse",
        folder=folder,
    )
    server, host = parts.server, parts.settings.nfs_listen_host
    try:
        staged = await parts.builder.build(ctx)
        try:
            path = f"/browse/{folder}"
            await server.export_filesystem(path, staged.filesystem, args.allow)
            shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
            with stop_signals() as stops:  # before saying so: a stop right after is clean
                print(
                    f"nfs://{shown}{path}?version=3&nfsport={server.port}&mountport={server.port}"
                )
                print(
                    f"browsing {vm} ({point.point_id}) read-only to {', '.join(args.allow)} "
                    f"(pid {os.getpid()}); Ctrl-C or SIGTERM stops",
                    file=sys.stderr,
                    flush=True,
                )
                sys.stdout.flush()
                await wait_for_stop_signal(stops)
        finally:
            await staged.filesystem.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            await parts.builder.discard(ctx)
