"""``liverecovery recover`` and ``liverecovery resume``: live recovery against a real vCenter/ESXi.

    liverecovery recover BACKUP --vm web01 --vcenter vc.example.com --user admin \\
        --password-env VC_PASSWORD --host esx01.example.com --datastore ds-fast

or the same keys in a TOML job file (``--job-file job.toml``; flags override it), with an
optional ``[settings]`` table. The process serves the backup over NFS (port 2049, portmapper on
111 by default, which ESXi asks; ``--nfs-port``/``--portmap-port`` move them) until the job ends.
Ctrl-C (or SIGTERM) before power-on cancels the job and rolls it back; once the VM runs from the
backup it is left running (never powered off: see ``liverecovery stop ID --power-off``) and
``resume`` serves it again. Either way the process ends within ``STOP_GRACE_S`` seconds, even when
vCenter hangs, and says what it left and why. While it runs, ``liverecovery jobs``, ``status``,
``cancel``, ``stop`` and ``migrate-now`` reach it through its control socket. ``resume`` picks up
the unfinished jobs of a process that stopped.
"""

from __future__ import annotations

import argparse
import contextlib
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
from liverecovery.catalog.objects import is_s3_url
from liverecovery.cli.lines import print_states, summary_line
from liverecovery.cli.route import route_address
from liverecovery.cli.serve import tcp_port
from liverecovery.cli.signals import STOP_GRACE_S, hard_exit_after
from liverecovery.config import Settings, load_toml
from liverecovery.errors import JobLeftRunningError, LiveRecoveryError, SettingsError
from liverecovery.io.threads import run_sync
from liverecovery.job.job import RecoveryJob
from liverecovery.nfs.server import NfsServer
from liverecovery.recovery.control import ControlServer, socket_path
from liverecovery.recovery.live import LiveRecovery
from liverecovery.recovery.node import node_problems, serving_node
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
    "folder",
    "resource_pool",
    "network_map",
)


def _network_map(value: object) -> dict[str, str]:
    """A job file's ``[network_map]`` table, or ``--network-map OLD=NEW`` flags."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs: dict[str, str] = {}
    for item in value if isinstance(value, list) else [value]:
        old, sep, new = str(item).partition("=")
        if not sep or not old or not new:
            raise SettingsError(f"--network-map {item!r}: expected OLD=NEW (port group names)")
        pairs[old] = new
    return pairs


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
    folder: str | None = None
    resource_pool: str | None = None
    network_map: dict[str, str] = attrs.field(factory=dict, converter=_network_map)
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
            folder=self.folder,
            resource_pool=self.resource_pool,
            network_map=self.network_map,
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
    elif key == "network_map":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
        )
        want = "a table of port group names (old = new)"
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
    config: RecoverConfig, args: argparse.Namespace | None = None, *, standby: bool = False
) -> AsyncIterator[tuple[LiveRecovery, NfsServer]]:
    """``LiveRecovery.from_settings`` on the backup, pyvmomi, and the control socket; with
    ``shared_state`` and ``node_name`` set, a serving node holding its address (``standby``:
    waiting for it, then taking it over with the jobs of the node that held it)."""
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

    async with contextlib.AsyncExitStack() as stack:
        if settings.shared_state and settings.node_name:
            # One of several serving nodes: it holds its service address by a lease in the
            # shared state (a standby takes it over, resumed), docs/scale-out.md.
            node = await stack.enter_async_context(
                serving_node(settings, vsphere=vcenter, takeover=standby)
            )
            lr = node.recovery
        else:
            lr = await stack.enter_async_context(
                LiveRecovery.from_settings(settings, vsphere=vcenter)
            )
        tg = await stack.enter_async_context(anyio.create_task_group())
        assert lr.assembly is not None
        await tg.start(ControlServer(lr, socket_path(settings.job_results_dir)).serve)
        try:
            yield lr, lr.assembly.server
        finally:
            tg.cancel_scope.cancel()


def _left_behind(jobs: list[RecoveryJob]) -> str:
    """What a stopping process leaves, job by job, and how to go on."""
    lines = []
    for job in jobs:
        if job.done and not job.left_running:
            continue
        if job.running_from_backup or job.left_running:
            vm = job.vm.name if job.vm else job.spec.vm
            lines.append(
                f"job {job.id}: left running: VM {vm!r} runs from the backup (it is production "
                f"and is never powered off automatically); export {job.export_path} and "
                f"datastore {job.datastore} stay. Run 'liverecovery resume' to serve it again, "
                f"or 'liverecovery stop {job.id} --power-off' from a resumed process."
            )
        else:
            pending = ", ".join(job.pending_compensations) or "nothing"
            lines.append(
                f"job {job.id}: {job.state.value}: not finished rolling back (vCenter did not "
                f"answer in time); still to undo: {pending}. Run 'liverecovery resume' to "
                "finish the rollback."
            )
    return "\n".join(lines) or "liverecovery: stopped"


async def _follow(jobs: list[RecoveryJob], as_json: bool) -> int:
    """Show progress until every job ends. Ctrl-C (SIGTERM) cancels the jobs not yet powered
    on (with rollback) and leaves running VMs running; the process leaves within
    ``STOP_GRACE_S`` s whatever vCenter does, saying what it left; a second signal leaves now."""

    async def on_signal(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            stopping = False
            async for _ in signals:
                if stopping:
                    hard_exit_after(0, lambda: _left_behind(jobs))
                    continue
                stopping = True
                print(
                    "stopping: rolling back jobs not yet powered on; VMs running from the "
                    "backup are left running...",
                    file=sys.stderr,
                )
                for job in jobs:
                    job.request_exit()
                hard_exit_after(STOP_GRACE_S, lambda: _left_behind(jobs))

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
            except JobLeftRunningError as exc:
                failed += 1
                print(str(exc), file=sys.stderr)
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
    recover.add_argument(
        "backup", nargs="?", help="backup root, VM folder, .ova or s3://bucket/prefix"
    )
    recover.add_argument("--vm", help="the VM to recover")
    recover.add_argument("--point", help="restore point id (default: the newest)")
    recover.add_argument("--datastore", help="the destination datastore")
    recover.add_argument("--redirect-writes-to", help="alternate datastore for the VM's writes")
    recover.add_argument("--passkey-env", help="environment variable holding the passkey")
    recover.add_argument("--new-bios-uuid", action="store_true", help="give the VM a new BIOS UUID")
    recover.add_argument(
        "--disconnect-nics", action="store_true", help="power on with the NICs disconnected"
    )
    recover.add_argument("--folder", help="the VM folder to register the VM in")
    recover.add_argument("--resource-pool", help="the resource pool to register the VM in")
    recover.add_argument(
        "--network-map",
        action="append",
        metavar="OLD=NEW",
        help="connect NICs on port group OLD to NEW instead (repeatable)",
    )
    _common(recover)
    recover.set_defaults(handler=run_recover)
    resume = sub.add_parser("resume", help="resume the unfinished jobs of a stopped process")
    resume.add_argument("backup", nargs="?", help="backup root the jobs read from")
    _common(resume)
    resume.set_defaults(handler=run_resume)
    standby = sub.add_parser(
        "standby",
        help="several serving nodes: wait for the node holding nfs_address to die, take the "
        "address over and resume its jobs (needs shared_state and node_name)",
    )
    standby.add_argument("backup", nargs="?", help="backup root the jobs read from")
    _common(standby)
    standby.set_defaults(handler=run_standby)


async def run_recover(args: argparse.Namespace) -> int:
    config = RecoverConfig.from_args(args, need_job=True)
    if not is_s3_url(config.backup) and not await anyio.Path(config.backup).exists():
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


async def run_standby(args: argparse.Namespace) -> int:
    config = RecoverConfig.from_args(args, need_job=False)
    settings = await run_sync(server_settings, config, args)
    if problems := node_problems(settings):
        raise SettingsError("standby needs " + "; ".join(problems))
    print(
        f"standby: node {settings.node_name} watches {settings.nfs_address} in "
        f"{settings.shared_state}",
        file=sys.stderr,
    )
    async with production(config, args, standby=True) as (lr, _server):
        jobs = list(lr.jobs())
        print(f"took {settings.nfs_address} over: {len(jobs)} job(s) resumed", file=sys.stderr)
        if not jobs:
            return 0
        return await _follow(jobs, args.json)
