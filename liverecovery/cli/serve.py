"""``liverecovery serve DIR``: export a local directory over NFSv3 until interrupted.

Operators use it to check that an ESX host can mount from this machine before a real recovery.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

import anyio

from liverecovery.cli.signals import wait_for_stop_signal
from liverecovery.config import default_job_results_dir
from liverecovery.errors import SettingsError
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer

__all__ = ["refuse_state_inside", "register", "run", "tcp_port"]


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def tcp_port(text: str) -> int:
    """argparse type of a port flag."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port in [0, 65535], got {text!r}")
    return int(text)


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve", help="serve a local directory over NFSv3 (check that an ESX host can mount)"
    )
    parser.add_argument("directory", type=Path, help="the directory to export")
    parser.add_argument(
        "--listen",
        type=_listen,
        default=("0.0.0.0", 2049),
        metavar="HOST:PORT",
        help="address of the NFS, MOUNT and portmap programs (default 0.0.0.0:2049)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        required=True,
        metavar="ADDR",
        help="client address, network (10.0.0.0/24) or host name allowed to mount; repeatable",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the handle key and export ids persist (default: <job results>/nfs-state)",
    )
    parser.add_argument(
        "--export-path", default=None, help="path clients mount (default: the directory's path)"
    )
    parser.add_argument(
        "--portmap-port",
        type=tcp_port,
        default=None,
        help="also answer the portmapper on this port (e.g. 111, which ESXi asks)",
    )
    parser.add_argument("--read-only", action="store_true", help="refuse every change")
    parser.set_defaults(handler=run)


def refuse_state_inside(state_dir: Path, directory: Path) -> None:
    """The state directory holds the handle key: inside the export, any client could read it
    over NFS and forge handles. Both paths must already be resolved.

    :raises SettingsError: ``state_dir`` is ``directory`` or lies inside it.
    """
    if state_dir == directory or directory in state_dir.parents:
        raise SettingsError(
            f"serve: the state directory {state_dir} lies inside the exported directory "
            f"{directory}: its handle key would be readable over NFS; choose --state-dir "
            "outside it"
        )


async def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; prints the ``nfs://`` URL a libnfs client can use."""
    directory = Path(await anyio.Path(args.directory).resolve())
    if not await anyio.Path(directory).exists():
        raise SettingsError(f"serve: {directory} does not exist")
    if not await anyio.Path(directory).is_dir():
        raise SettingsError(f"serve: {directory} is not a directory")
    host, port = args.listen
    args.port_flags = {port: "--listen HOST:PORT"}
    if args.portmap_port is not None:
        args.port_flags[args.portmap_port] = "--portmap-port"
    state_dir: Path = args.state_dir or default_job_results_dir() / "nfs-state"
    refuse_state_inside(Path(await anyio.Path(state_dir).resolve()), directory)
    export_path: str = args.export_path or str(directory)
    fs = LocalFilesystem(directory, read_only=args.read_only)
    async with NfsServer(state_dir, host=host, port=port, portmap_port=args.portmap_port) as server:
        await server.export_filesystem(export_path, fs, args.allow)
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        if ":" in shown:
            shown = f"[{shown}]"
        print(
            f"nfs://{shown}{export_path}?version=3&nfsport={server.port}&mountport={server.port}",
            flush=True,
        )
        print(
            f"serving {directory} to {', '.join(args.allow)} (pid {os.getpid()}); Ctrl-C or SIGTERM stops",
            file=sys.stderr,
            flush=True,
        )
        try:
            await wait_for_stop_signal()
        finally:
            await fs.aclose()
    return 0
