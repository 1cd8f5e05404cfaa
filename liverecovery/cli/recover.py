"""``liverecovery recover`` and ``liverecovery resume``: live recovery against a real vCenter/ESXi.

    liverecovery recover BACKUP --vm web01 --vcenter vc.example.com --user admin \\
        --password-env VC_PASSWORD --host esx01.example.com --datastore ds-fast

or the same keys in a TOML job file (``--job-file job.toml``; flags override it), with an
optional ``[settings]`` table. The process serves the backup over NFS (port 2049, portmapper on
111 by default, which ESXi asks; ``--nfs-port``/``--portmap-port`` move them) until the job ends;
Ctrl-C cancels the job and rolls it back. While it runs, ``liverecovery jobs`` and ``liverecovery cancel ID`` reach it through its
control socket. ``resume`` picks up the unfinished jobs of a process that stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs

from liverecovery.backends import VSphereClient
from liverecovery.cli.lines import print_states, summary_line
from liverecovery.cli.route import route_address
from liverecovery.cli.serve import tcp_port
from liverecovery.config import Settings, load_toml
from liverecovery.errors import LiveRecoveryError, SettingsError
from liverecovery.io.threads import run_sync
from liverecovery.job.job import RecoveryJob
from liverecovery.nfs.server import NfsServer
from liverecovery.recovery.control import ControlServer, socket_path
from liverecovery.recovery.live import LiveRecovery
from liverecovery.recovery.progress import show_progress
from liverecovery.spec import RecoverySpec

__all__ = ["RecoverConfig", "register"]

_KEYS = (
    "backup",
    "vm",
    "point",
    "vcenter",
    "user",
    "password_env",
    "host",
    "esx_address",
    "datastore",
    "redirect_writes_to",
    "nfs_address",
    "nfs_port",
    "portmap_port",
    "passkey_env",
    "insecure",
    "ca_file",
    "new_bios_uuid",
    "disconnect_nics",
)


@attrs.frozen
class RecoverConfig:
    """Where to recover from and to; secrets are named by environment variable, never given."""

    vcenter: str
    user: str
    password_env: str
    host: str
    backup: str = ""
    vm: str = ""
    point: str | None = None
    datastore: str = ""
    esx_address: str | None = None
    redirect_writes_to: str | None = None
    nfs_address: str | None = None
    nfs_port: int | None = None
    portmap_port: int | None = None
    passkey_env: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    new_bios_uuid: bool = False
    disconnect_nics: bool = False
    settings: Settings = attrs.field(factory=Settings)

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, need_job: bool) -> RecoverConfig:
        """Flags over the job file's keys. :raises SettingsError: naming the missing key."""
        data: dict[str, Any] = {}
        settings = Settings()
        source = "command line"
        if args.job_file:
            source = str(args.job_file)
            doc = load_toml(args.job_file, what="job file")
            for key, value in doc.items():
                if key == "settings":
                    continue
                if key not in _KEYS:
                    hint = " (settings go under [settings])" if key in _SETTING_NAMES else ""
                    raise SettingsError(f"{source}: unknown key {key!r}{hint}")
                _check_type(source, key, value)
                data[key] = value
            if "settings" in doc:
                if not isinstance(doc["settings"], dict):
                    raise SettingsError(f"{source}: [settings] must be a table")
                settings = Settings.from_mapping(doc["settings"], source=source)
        for key in _KEYS:
            value = getattr(args, key, None)
            if value is not None and value is not False and value != "":
                data[key] = value
        required = ["vcenter", "user", "password_env", "host"]
        if need_job:
            required += ["backup", "vm", "datastore"]
        missing = [k for k in required if not data.get(k)]
        if missing:
            flags = ", ".join("--" + k.replace("_", "-") for k in missing)
            raise SettingsError(f"{source}: missing {flags}")
        for flag in ("insecure", "new_bios_uuid", "disconnect_nics"):
            data[flag] = bool(data.get(flag, False))
        return cls(settings=settings, **{k: v for k, v in data.items() if k in _KEYS})

    def secret(self, env: str | None, what: str) -> str | None:
        """The value of environment variable ``env``. :raises SettingsError: it is not set."""
        if env is None:
            return None
        value = os.environ.get(env)
        if not value:
            raise SettingsError(f"{what}: environment variable {env} is not set")
        return value

    def spec(self) -> RecoverySpec:
        return RecoverySpec(
            vm=self.vm,
            esx_host=self.host,
            esx_address=self.esx_address,
            datastore=self.datastore,
            point_id=self.point,
            redirect_writes_to=self.redirect_writes_to,
            passkey=self.secret(self.passkey_env, "--passkey-env"),
            new_bios_uuid=self.new_bios_uuid,
            disconnect_nics=self.disconnect_nics,
        )


_SETTING_NAMES = frozenset(a.name for a in attrs.fields(Settings))
_BOOL_KEYS = frozenset({"insecure", "new_bios_uuid", "disconnect_nics"})
_PORT_KEYS = frozenset({"nfs_port", "portmap_port"})


def _check_type(source: str, key: str, value: object) -> None:
    """A job file's value has the type its key needs. :raises SettingsError: naming both."""
    if key in _BOOL_KEYS:
        ok, want = isinstance(value, bool), "true or false"
    elif key in _PORT_KEYS:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535
        want = "a TCP port in [0, 65535]"
    else:
        ok, want = isinstance(value, str) and bool(value), "a non-empty string"
    if not ok:
        raise SettingsError(f"{source}: {key} must be {want}, got {value!r}")


def port_flags(settings: Settings) -> dict[int, str]:
    """What moves each port ``recover`` listens on (for the one-line error of a taken port)."""
    return {
        settings.portmap_port: "--portmap-port or the portmap_port setting (ESXi asks port 111)",
        settings.nfs_port: "--nfs-port or the nfs_port setting",
    }


def server_settings(config: RecoverConfig, args: argparse.Namespace | None = None) -> Settings:
    """The settings with the job file's and the flags' ports and NFS address applied.

    Without an NFS address, the address of the interface that routes to the ESX host.
    """
    settings = config.settings
    changes: dict[str, Any] = {}
    if config.nfs_port is not None:
        changes["nfs_port"] = config.nfs_port
    if config.portmap_port is not None:
        changes["portmap_port"] = config.portmap_port
    if config.nfs_address:
        changes["nfs_address"] = config.nfs_address
    elif not settings.nfs_address:
        changes["nfs_address"] = route_address(config.esx_address or config.host)
    settings = attrs.evolve(settings, **changes)
    if args is not None:
        args.port_flags = port_flags(settings)
    return settings


@asynccontextmanager
async def production(
    config: RecoverConfig, args: argparse.Namespace | None = None
) -> AsyncIterator[tuple[LiveRecovery, NfsServer]]:
    """``LiveRecovery.from_settings`` on the backup, pyvmomi, and the control socket."""
    settings = await run_sync(server_settings, config, args)
    settings = attrs.evolve(settings, backup_root=config.backup or settings.backup_root or ".")
    password = config.secret(config.password_env, "--password-env") or ""

    @asynccontextmanager
    async def vcenter(_server: NfsServer) -> AsyncIterator[VSphereClient]:
        # Imported here: pyVmomi loads only when a command talks to vSphere.
        from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

        async with await PyvmomiVSphereClient.connect(
            config.vcenter, config.user, password, insecure=config.insecure, ca_file=config.ca_file
        ) as client:
            yield client

    async with (
        LiveRecovery.from_settings(settings, vsphere=vcenter) as lr,
        anyio.create_task_group() as tg,
    ):
        assert lr.assembly is not None
        await tg.start(ControlServer(lr, socket_path(settings.job_results_dir)).serve)
        try:
            yield lr, lr.assembly.server
        finally:
            tg.cancel_scope.cancel()


async def _follow(jobs: list[RecoveryJob], as_json: bool) -> int:
    """Show progress until every job ends; Ctrl-C cancels them (with rollback)."""

    async def on_signal(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                print("cancelling: rolling back...", file=sys.stderr)
                for job in jobs:
                    job.request_cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(on_signal, tg.cancel_scope)
        async with anyio.create_task_group() as followers:
            for job in jobs:
                if not as_json and sys.stderr.isatty():
                    followers.start_soon(show_progress, job)
                elif not as_json:
                    followers.start_soon(print_states, job)
        failed = 0
        for job in jobs:
            try:
                await job.wait()
            except LiveRecoveryError as exc:
                failed += 1
                print(f"job {job.id}: {job.state.value}: {exc}", file=sys.stderr)
            if as_json:
                print(json.dumps(job.summary().to_json()))
            else:
                print(summary_line(job.summary()), flush=True)
        tg.cancel_scope.cancel()
    return 1 if failed else 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job-file", help="a TOML file with these keys and a [settings] table")
    parser.add_argument("--vcenter", help="vCenter or ESXi address (or https://host/sdk)")
    parser.add_argument("--user")
    parser.add_argument("--password-env", help="environment variable holding the password")
    parser.add_argument("--host", help="the destination ESX host, as vCenter names it")
    parser.add_argument("--esx-address", help="the address the ESX host connects from")
    parser.add_argument(
        "--nfs-address",
        help="the address the ESX host mounts from (default: this machine's address on the "
        "interface that routes to the ESX host)",
    )
    parser.add_argument(
        "--nfs-port", type=tcp_port, help="the NFS server's port (default 2049, nfs_port)"
    )
    parser.add_argument(
        "--portmap-port",
        type=tcp_port,
        help="the portmapper's port (default 111, portmap_port; ESXi asks 111)",
    )
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument("--ca-file", help="CA bundle to verify vCenter's certificate")
    parser.add_argument("--json", action="store_true", help="print each job's summary as JSON")


def register(sub: Any) -> None:
    """Add the ``recover`` and ``resume`` subcommands."""
    recover = sub.add_parser("recover", help="live-recover a VM from a backup onto vSphere")
    recover.add_argument("backup", nargs="?", help="backup root, VM folder or .ova")
    recover.add_argument("--vm", help="the VM to recover")
    recover.add_argument("--point", help="restore point id (default: the newest)")
    recover.add_argument("--datastore", help="the destination datastore")
    recover.add_argument("--redirect-writes-to", help="alternate datastore for the VM's writes")
    recover.add_argument("--passkey-env", help="environment variable holding the passkey")
    recover.add_argument("--new-bios-uuid", action="store_true", help="give the VM a new BIOS UUID")
    recover.add_argument(
        "--disconnect-nics", action="store_true", help="power on with the NICs disconnected"
    )
    _common(recover)
    recover.set_defaults(handler=run_recover)
    resume = sub.add_parser("resume", help="resume the unfinished jobs of a stopped process")
    resume.add_argument("backup", nargs="?", help="backup root the jobs read from")
    _common(resume)
    resume.set_defaults(handler=run_resume)


async def run_recover(args: argparse.Namespace) -> int:
    config = RecoverConfig.from_args(args, need_job=True)
    if not await anyio.Path(config.backup).exists():
        raise SettingsError(f"{config.backup}: the backup path does not exist")
    spec = config.spec()
    async with production(config, args) as (lr, server):
        job = await lr.start(spec)
        print(f"job {job.id}: recovering {config.vm}; NFS at {server.url('/')}", file=sys.stderr)
        return await _follow([job], args.json)


async def run_resume(args: argparse.Namespace) -> int:
    config = RecoverConfig.from_args(args, need_job=False)
    async with production(config, args) as (lr, _server):
        jobs = await lr.resume()
        for error in lr.resume_errors:
            print(f"skipped: {error}", file=sys.stderr)
        if not jobs:
            print("no unfinished jobs", file=sys.stderr)
            return 0
        return await _follow(jobs, args.json)
