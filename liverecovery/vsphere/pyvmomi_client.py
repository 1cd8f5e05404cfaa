"""The ``VSphereClient`` for real vCenter Server or standalone ESXi, through pyVmomi.

pyVmomi is blocking, so every SOAP call runs in a worker thread (``io.threads.run_sync``), a few at a
time. Long operations are vSphere tasks: they are polled until done, with a timeout, and their
progress is passed to the caller's ``ProgressCallback``. Whatever vSphere or the network raises
leaves as ``VSphereError`` (keeping the fault's type name) or ``BackendError``.

Certificate verification is on unless the caller opts out with ``insecure=True``.

Example::

    async with await PyvmomiVSphereClient.connect(
        "vcenter.example", "administrator@vsphere.local", password, ca_file="vc-ca.pem"
    ) as vsphere:
        name = await vsphere.mount_nfs_datastore("esx01", "10.0.0.5", "/liverecovery", "lr-web01")
        vm = await vsphere.register_vm("esx01", f"[{name}] web01/web01.vmx", "web01")
        await vsphere.power_on(vm)
        vm = await vsphere.relocate(vm, "ssd-01", progress=lambda done, total: ...)
"""

from __future__ import annotations

import logging
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
from anyio.abc import AsyncResource
from pyVim import connect as pyvim_connect
from pyVmomi import vim, vmodl

from liverecovery.backends import (
    GuestCredentials,
    GuestInfo,
    GuestOperations,
    ProgressCallback,
    TargetFacts,
    TargetQuery,
    VmRef,
    VSphereClient,
)
from liverecovery.errors import (
    BackendError,
    BackendTimeoutError,
    NfsVolumeLimitError,
    NotOfferedError,
    VSphereError,
)
from liverecovery.io.threads import run_sync
from liverecovery.vsphere.connection import (
    DEFAULT_HTTP_TIMEOUT_S,
    call_bound,
    parse_server,
    ssl_context,
)
from liverecovery.vsphere.faults import fault_error, translate
from liverecovery.vsphere.inventory import DEFAULT_NFS_MAX_VOLUMES, VSphereInventory
from liverecovery.vsphere.relocation import answer_for_question, relocate_spec
from liverecovery.vsphere.vmomi import managed_object, new

__all__ = ["DEFAULT_NFS_MAX_VOLUMES", "PyvmomiVSphereClient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Bound on best-effort calls made while giving up (logout, cancelling a task).
_CLOSE_WAIT_S = 10.0

_VMX_PATH = re.compile(r"^\[(?P<datastore>[^\]]+)\] ?(?P<path>.+)$")


def _subject(vm: VmRef) -> str:
    return f"VM {vm.name} ({vm.moref})"


class PyvmomiVSphereClient(AsyncResource, GuestOperations):
    """**VSphereClient** for vCenter Server or a standalone ESXi host.

    Build it with :meth:`connect` (or from an existing pyVmomi session and its content).
    Hosts, datastores, resource pools and folders are found by name. VMs are registered into
    ``vm_folder`` (default: the host's datacenter VM folder) and ``resource_pool`` (default: the
    root pool of the host's cluster or standalone host). The ``find_*`` methods return pyVmomi
    managed objects: reading their properties is a blocking SOAP call.
    """

    def __init__(
        self,
        service_instance: vim.ServiceInstance,
        content: vim.ServiceInstanceContent,
        *,
        server: str,
        vm_folder: str | None = None,
        resource_pool: str | None = None,
        task_timeout: float = 600.0,
        relocate_timeout: float = 7 * 24 * 3600.0,
        poll_interval: float = 0.5,
        max_concurrent_calls: int = 4,
        call_timeout: float = DEFAULT_HTTP_TIMEOUT_S,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._tls = tls
        """The TLS context of the session, for file downloads (a console screenshot)."""
        self._si = service_instance
        self._content = content
        self._inventory = VSphereInventory(content, server)
        self._server = server
        self._vm_folder = vm_folder
        self._resource_pool = resource_pool
        self._task_timeout = task_timeout
        self._relocate_timeout = relocate_timeout
        self._poll_interval = poll_interval
        self._call_timeout = call_timeout
        self._limiter = anyio.CapacityLimiter(max_concurrent_calls)
        # Check-then-mount must be atomic per host, or concurrent jobs overshoot NFS.MaxVolumes.
        self._mount_locks: dict[str, anyio.Lock] = {}
        self._closed = False

    # -- connection ------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        server: str,
        user: str,
        password: str,
        *,
        port: int | None = None,
        insecure: bool = False,
        ca_file: str | Path | None = None,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT_S,
        vm_folder: str | None = None,
        resource_pool: str | None = None,
        task_timeout: float = 600.0,
        relocate_timeout: float = 7 * 24 * 3600.0,
        poll_interval: float = 0.5,
    ) -> PyvmomiVSphereClient:
        """Log in to ``server`` (``host``, ``host:port`` or ``https://host:port/sdk``).

        The server's certificate must verify against the system CAs or ``ca_file``;
        ``insecure=True`` skips verification (and logs a warning). ``http_timeout`` bounds the
        connect and every socket read of the SOAP connection, and each SOAP call as a whole
        (a hung vCenter gives ``BackendTimeoutError`` naming the call; see ``connection.py``).

        :raises SettingsError: malformed ``server`` or unreadable ``ca_file``.
        :raises VSphereError: the server refused the login (fault ``InvalidLogin``...).
        :raises BackendError: the server cannot be reached or its certificate is not trusted.
        """
        host, real_port, path = parse_server(server, port)
        context = ssl_context(insecure, ca_file)
        where = f"{host}:{real_port}"
        if insecure:
            logger.warning("TLS certificate verification is disabled for vSphere server %s", where)

        def login() -> tuple[vim.ServiceInstance, vim.ServiceInstanceContent]:
            smart_connect = cast(Callable[..., vim.ServiceInstance], pyvim_connect.SmartConnect)
            si = smart_connect(
                protocol="https",
                host=host,
                port=real_port,
                path=path,
                user=user,
                pwd=password,
                sslContext=context,
                httpConnectionTimeout=http_timeout,
            )
            return si, si.RetrieveContent()

        try:
            with anyio.fail_after(call_bound(http_timeout)):
                si, content = await run_sync(login, abandon_on_cancel=True)
        except TimeoutError:
            raise BackendTimeoutError(
                f"vsphere.connect to {where} did not answer within {http_timeout:g} s",
                operation="vsphere.connect",
            ) from None
        except Exception as exc:
            error = translate(exc, "vsphere.connect", where)
            if error is None:
                raise
            raise error from exc
        client = cls(
            si,
            content,
            server=where,
            vm_folder=vm_folder,
            resource_pool=resource_pool,
            task_timeout=task_timeout,
            relocate_timeout=relocate_timeout,
            poll_interval=poll_interval,
            call_timeout=http_timeout,
            tls=context,
        )
        logger.info("connected to %s (%s)", where, client._content.about.fullName)
        return client

    async def aclose(self) -> None:
        """Log out and drop the connections; closing twice is a no-op.

        Waits at most ``_CLOSE_WAIT_S`` for the logout: a dead server must not hold up shutdown.
        """
        if self._closed:
            return
        self._closed = True
        si = self._si
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_WAIT_S):
            await run_sync(pyvim_connect.Disconnect, si, abandon_on_cancel=True)

    @property
    def service_instance(self) -> vim.ServiceInstance:
        """The pyVmomi service instance, for calls this client does not wrap."""
        return self._si

    # -- plumbing --------------------------------------------------------------------------------

    async def _call(self, operation: str, fn: Callable[[], T], subject: str = "") -> T:
        """Run blocking pyVmomi code in a worker thread; translate what it raises.

        Bounded by ``call_timeout`` (a hung vCenter fails the call naming it) and abandoned
        on cancellation: a thread stuck in a socket read must not hold up a timeout or
        Ctrl-C (it ends by itself at the socket timeout; its result is dropped).
        """
        if self._closed:
            raise BackendError(f"{operation}: the vSphere client is closed", operation=operation)
        try:
            with anyio.fail_after(call_bound(self._call_timeout)):
                return await run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)
        except TimeoutError:
            what = f"{operation} of {subject}" if subject else operation
            raise BackendTimeoutError(
                f"{what}: {self._server} did not answer within {self._call_timeout:g} s",
                operation=operation,
            ) from None
        except Exception as exc:
            error = translate(exc, operation, self._server, subject)
            if error is None:
                raise
            raise error from exc

    async def _wait_task(
        self,
        operation: str,
        task: vim.Task,
        *,
        time_limit: float,
        progress: ProgressCallback | None = None,
        vm: vim.VirtualMachine | None = None,
        subject: str = "",
    ) -> Any:
        """Poll ``task`` until it ends; its result, or its fault as ``VSphereError``.

        With ``vm``, a pending VM question is answered when it is the "moved or copied?" one
        and reported as an error otherwise (the task would never finish on its own). On timeout
        or cancellation the task is cancelled in vSphere, best effort.
        """
        last_progress: int | None = None
        try:
            with anyio.fail_after(time_limit):
                while True:
                    info = await self._call(operation, lambda: task.info, subject)
                    if info.state == vim.TaskInfo.State.success:
                        if progress is not None:
                            progress(100, 100)
                        return info.result
                    if info.state == vim.TaskInfo.State.error:
                        fault = info.error or new(vmodl.MethodFault)
                        raise fault_error(fault, operation, self._server, subject)
                    done = info.progress
                    if progress is not None and done is not None and done != last_progress:
                        last_progress = done
                        progress(done, 100)
                    if vm is not None:
                        await self._answer_question(operation, vm, subject)
                    await anyio.sleep(self._poll_interval)
        except TimeoutError:
            await self._cancel_task(task)
            what = f"{operation} of {subject}" if subject else operation
            raise BackendTimeoutError(
                f"{what} on {self._server} did not finish within {time_limit:g} s",
                operation=operation,
            ) from None
        except anyio.get_cancelled_exc_class():
            await self._cancel_task(task)
            raise

    async def _cancel_task(self, task: vim.Task) -> None:
        def cancel() -> None:
            try:
                if task.info.cancelable:
                    task.Cancel()
            except (vmodl.MethodFault, OSError) as exc:
                logger.warning("could not cancel vSphere task %s: %s", task._moId, exc)

        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_WAIT_S):
            await run_sync(cancel, abandon_on_cancel=True)

    async def _answer_question(self, operation: str, vm: vim.VirtualMachine, subject: str) -> None:
        def answer() -> vim.vm.QuestionInfo | None:
            question = vm.runtime.question
            if question is None:
                return None
            choice = answer_for_question(question)
            if choice is None:
                return question
            logger.info("answering VM question %r with choice %s", question.text, choice)
            vm.Answer(question.id, choice)
            return None

        unanswered = await self._call(operation, answer, subject)
        if unanswered is not None:
            raise VSphereError(
                f"{operation} of {subject or vm._moId}: the VM waits for an answer to: "
                f"{unanswered.text}",
                operation=operation,
                fault="VirtualMachineQuestion",
            )

    def _vm(self, vm: VmRef) -> vim.VirtualMachine:
        return managed_object(vim.VirtualMachine, vm.moref, self._si._stub)

    def _vm_ref(self, vm: vim.VirtualMachine) -> VmRef:
        return VmRef(moref=vm._moId, name=vm.name, vmx_path=vm.summary.config.vmPathName)

    # -- lookups --------------------------------------------------------------------------

    async def find_host(self, name: str) -> vim.HostSystem:
        """The host called ``name``. :raises VSphereError: none (``NotFound``) or several."""
        return await self._call("vsphere.find_host", lambda: self._inventory.host(name))

    async def find_datastore(self, host: str, name: str) -> vim.Datastore:
        """The datastore ``name`` as mounted on ``host``. :raises VSphereError: ``NotFound``."""
        return await self._call(
            "vsphere.find_datastore",
            lambda: self._inventory.host_datastore(self._inventory.host(host), name),
        )

    async def find_resource_pool(self, host: str) -> vim.ResourcePool:
        """The pool VMs registered on ``host`` go to. :raises VSphereError: ``NotFound``."""
        return await self._call(
            "vsphere.find_resource_pool",
            lambda: self._inventory.pool_for(self._inventory.host(host), self._resource_pool),
        )

    async def find_folder(self, host: str) -> vim.Folder:
        """The folder VMs registered on ``host`` go to. :raises VSphereError: ``NotFound``."""
        return await self._call(
            "vsphere.find_folder",
            lambda: self._inventory.folder_for(self._inventory.host(host), self._vm_folder),
        )

    async def describe(self, query: TargetQuery) -> TargetFacts:
        """Facts about a job's targets for preflight: the host (connection, maintenance mode,
        NFS mounts and ``NFS.MaxVolumes``), its datastores and port groups in one property
        collection, the folder, pool and VM name by name, and the session's privileges on
        each (``HasPrivilegeOnEntities``). :raises VSphereError: vSphere could not be asked."""
        return await self._call(
            "vsphere.describe",
            lambda: self._inventory.describe(query, self._vm_folder, self._resource_pool),
            f"the targets on host {query.host}",
        )

    # -- NFS datastores ---------------------------------------------------------------------------

    async def nfs_volumes(self, host: str) -> tuple[int, int]:
        """(NFSv3 datastores mounted on ``host``, its ``NFS.MaxVolumes``)."""

        def count() -> tuple[int, int]:
            system = self._inventory.host(host)
            return len(self._inventory.mounted_nfs(system)), self._inventory.nfs_max_volumes(system)

        return await self._call("vsphere.nfs_volumes", count)

    async def mount_nfs_datastore(
        self, host: str, remote_host: str, remote_path: str, datastore: str
    ) -> str:
        """Mount the NFSv3 export ``remote_host:remote_path`` on ``host`` as ``datastore``.

        First checks that the host may mount one more NFS volume; mounts on one host through
        this client are serialized so concurrent jobs cannot overshoot the limit together.

        :raises NfsVolumeLimitError: the host already mounts ``NFS.MaxVolumes`` NFS datastores.
        :raises VSphereError: the mount failed (``DuplicateName``, ``HostConfigFault``...).
        """

        def mount() -> str:
            system = self._inventory.host(host)
            mounted = self._inventory.mounted_nfs(system)
            limit = self._inventory.nfs_max_volumes(system)
            if len(mounted) >= limit:
                raise NfsVolumeLimitError(
                    f"host {host} already mounts {len(mounted)} NFS datastores and its "
                    f"NFS.MaxVolumes is {limit}: unmount one ({', '.join(sorted(mounted))}) "
                    "or raise NFS.MaxVolumes before mounting datastore "
                    f"{datastore!r}",
                    host=host,
                    mounted=len(mounted),
                    limit=limit,
                )
            spec = new(vim.host.NasVolume.Specification)
            spec.remoteHost = remote_host
            spec.remotePath = remote_path
            spec.localPath = datastore
            spec.accessMode = vim.host.MountInfo.AccessMode.readWrite
            spec.type = vim.host.FileSystemVolume.FileSystemType.NFS
            system_dss = system.configManager.datastoreSystem
            if system_dss is None:
                raise VSphereError(
                    f"host {host} has no datastore system",
                    operation="vsphere.mount_nfs_datastore",
                    fault="NotSupported",
                )
            created = system_dss.CreateNasDatastore(spec)
            name: str = created.name
            return name

        subject = f"datastore {datastore!r} ({remote_host}:{remote_path}) on host {host}"
        lock = self._mount_locks.setdefault(host, anyio.Lock())
        async with lock:
            name = await self._call("vsphere.mount_nfs_datastore", mount, subject)
        logger.info("mounted %s:%s on %s as datastore %s", remote_host, remote_path, host, name)
        return name

    async def unmount_datastore(self, host: str, datastore: str) -> None:
        """Unmount ``datastore`` from ``host`` (``HostDatastoreSystem.RemoveDatastore``).

        :raises VSphereError: not mounted there (``NotFound``), or a VM still lives on it
            (``ResourceInUse``).
        """

        def unmount() -> None:
            system = self._inventory.host(host)
            target = self._inventory.host_datastore(system, datastore)
            system_dss = system.configManager.datastoreSystem
            if system_dss is None:
                raise VSphereError(
                    f"host {host} has no datastore system",
                    operation="vsphere.unmount_datastore",
                    fault="NotSupported",
                )
            system_dss.RemoveDatastore(target)

        await self._call("vsphere.unmount_datastore", unmount, f"{datastore!r} on host {host}")
        logger.info("unmounted datastore %s from %s", datastore, host)

    # -- VMs --------------------------------------------------------------------------------------

    async def register_vm(
        self,
        host: str,
        vmx_path: str,
        name: str,
        *,
        folder: str | None = None,
        resource_pool: str | None = None,
    ) -> VmRef:
        """Register the .vmx at ``vmx_path`` (``[datastore] folder/vm.vmx``) on ``host``, into
        ``folder`` and ``resource_pool`` (default: the client's ``vm_folder`` and
        ``resource_pool``, else the host's datacenter VM folder and root pool).

        :raises VSphereError: malformed path or unknown datastore (``InvalidDatastorePath``,
            ``NotFound``), missing files (``NotFound``), name taken (``AlreadyExists``)...
        """
        match = _VMX_PATH.match(vmx_path)
        if match is None or not match["path"].endswith(".vmx"):
            raise VSphereError(
                f"{vmx_path!r} is not a datastore path to a .vmx ('[datastore] folder/vm.vmx')",
                operation="vsphere.register_vm",
                fault="InvalidDatastorePath",
            )

        def start() -> vim.Task:
            system = self._inventory.host(host)
            # vCenter would fault on an unknown datastore too; checking first gives a clear error.
            self._inventory.host_datastore(system, match["datastore"])
            target = self._inventory.folder_for(system, folder or self._vm_folder)
            pool = self._inventory.pool_for(system, resource_pool or self._resource_pool)
            return target.RegisterVm(vmx_path, name, False, pool, system)

        subject = f"{vmx_path} on host {host}"
        task = await self._call("vsphere.register_vm", start, subject)
        created = await self._wait_task(
            "vsphere.register_vm", task, time_limit=self._task_timeout, subject=subject
        )
        if not isinstance(created, vim.VirtualMachine):
            raise VSphereError(
                f"vsphere.register_vm: the task returned {created!r}, not a VM",
                operation="vsphere.register_vm",
            )
        ref = await self._call("vsphere.register_vm", lambda: self._vm_ref(created))
        logger.info("registered %s as %s (%s)", vmx_path, ref.name, ref.moref)
        return ref

    async def unregister_vm(self, vm: VmRef) -> None:
        """Remove the VM from the inventory; its files stay. :raises VSphereError:"""
        await self._call("vsphere.unregister_vm", lambda: self._vm(vm).Unregister(), _subject(vm))
        logger.info("unregistered %s (%s)", vm.name, vm.moref)

    async def power_on(self, vm: VmRef) -> None:
        """Power the VM on; answers ESXi's "moved or copied?" question with "moved".

        :raises VSphereError: e.g. ``InvalidPowerState`` when it is already on.
        """
        target = self._vm(vm)
        subject = _subject(vm)
        task = await self._call("vsphere.power_on", lambda: target.PowerOn(None), subject)
        await self._wait_task(
            "vsphere.power_on", task, time_limit=self._task_timeout, vm=target, subject=subject
        )

    async def power_off(self, vm: VmRef) -> None:
        """Power the VM off (hard). :raises VSphereError: e.g. ``InvalidPowerState``."""
        target = self._vm(vm)
        subject = _subject(vm)
        task = await self._call("vsphere.power_off", lambda: target.PowerOff(), subject)
        await self._wait_task(
            "vsphere.power_off", task, time_limit=self._task_timeout, subject=subject
        )

    async def nfs_datastores(self, host: str) -> list[str]:
        """Names of the NFSv3 datastores ``host`` mounts."""
        return await self._call(
            "vsphere.nfs_datastores",
            lambda: self._inventory.mounted_nfs(self._inventory.host(host)),
        )

    async def find_vm(self, vmx_path: str) -> VmRef | None:
        """The VM registered from ``vmx_path`` in any datacenter (``FindByDatastorePath``)."""

        def find() -> VmRef | None:
            content = self._inventory.content
            if content.viewManager is None or content.searchIndex is None:
                raise VSphereError(
                    f"{self._inventory.server} has no view manager or search index",
                    operation="vsphere.find_vm",
                    fault="NotSupported",
                )
            view = content.viewManager.CreateContainerView(
                content.rootFolder, [vim.Datacenter], True
            )
            try:
                datacenters = [dc for dc in view.view if isinstance(dc, vim.Datacenter)]
            finally:
                view.Destroy()
            for datacenter in datacenters:
                found = content.searchIndex.FindByDatastorePath(datacenter, vmx_path)
                if found is not None:
                    return self._vm_ref(found)
            return None

        return await self._call("vsphere.find_vm", find, vmx_path)

    async def power_state(self, vm: VmRef) -> str:
        """``poweredOn``, ``poweredOff`` or ``suspended``."""
        return await self._call("vsphere.power_state", lambda: str(self._vm(vm).runtime.powerState))

    # -- GuestOperations (backup verification) ---------------------------------------------------

    async def guest_info(self, vm: VmRef) -> GuestInfo:
        """Whether VMware Tools run, the heartbeat, the primary IP address (``summary``)."""
        target = self._vm(vm)

        def read() -> GuestInfo:
            # One property, ``summary``: its guest and quick stats hold all three (and the
            # govmomi simulator fails a fetch of an unset top-level property).
            summary = target.summary
            stats, guest = summary.quickStats, summary.guest
            heartbeat = str((stats.guestHeartbeatStatus if stats else None) or "gray")
            if guest is None:
                return GuestInfo(heartbeat=heartbeat)
            return GuestInfo(
                tools_running=str(guest.toolsRunningStatus or "") == "guestToolsRunning",
                heartbeat=heartbeat,
                ip_address=guest.ipAddress or None,
            )

        return await self._call("vsphere.guest_info", read, _subject(vm))

    async def run_in_guest(
        self,
        vm: VmRef,
        credentials: GuestCredentials,
        program: str,
        arguments: str,
        wait_s: float,
    ) -> int:
        """``StartProgramInGuest``, then ``ListProcessesInGuest`` until the process ends; its
        exit code. Past ``wait_s`` the process is terminated (best effort).

        :raises VSphereError: the guest refused (``InvalidGuestLogin``, ``GuestOperationsUnavailable``,
            ``FileNotFound``...). :raises BackendTimeoutError: it ran longer than ``wait_s``.
        """
        target = self._vm(vm)
        subject = _subject(vm)
        op = "vsphere.run_in_guest"
        manager = self._content.guestOperationsManager
        processes = manager.processManager if manager is not None else None
        if processes is None:
            raise NotOfferedError(f"{self._server} offers no guest operations", operation=op)
        auth = new(vim.vm.guest.NamePasswordAuthentication)
        auth.username, auth.password = credentials.username, credentials.password
        spec = new(vim.vm.guest.ProcessManager.ProgramSpec)
        spec.programPath, spec.arguments = program, arguments
        pid = await self._call(
            op, lambda: processes.StartProgramInGuest(target, auth, spec), subject
        )
        try:
            with anyio.fail_after(wait_s):
                while True:
                    found = await self._call(
                        op, lambda: processes.ListProcessesInGuest(target, auth, [pid]), subject
                    )
                    if found and found[0].endTime is not None:
                        return int(found[0].exitCode or 0)
                    await anyio.sleep(self._poll_interval)
        except TimeoutError:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_WAIT_S):
                try:
                    await self._call(
                        op, lambda: processes.TerminateProcessInGuest(target, auth, pid), subject
                    )
                except BackendError as exc:
                    logger.warning("could not end guest process %s of %s: %s", pid, subject, exc)
            raise BackendTimeoutError(
                f"{op} of {subject}: {program} still ran after {wait_s:g} s (terminated)",
                operation=op,
            ) from None

    async def screenshot(self, vm: VmRef) -> bytes | None:
        """``CreateScreenshot_Task``, then the PNG downloaded from the datastore file URL; None
        when vSphere does not offer it (fault ``NotSupported``, ``NotImplemented``, or the
        method is unknown, as in the govmomi simulator)."""
        target = self._vm(vm)
        subject = _subject(vm)
        op = "vsphere.screenshot"
        try:
            task = await self._call(op, lambda: target.CreateScreenshot(), subject)
            path = await self._wait_task(op, task, time_limit=self._task_timeout, subject=subject)
        except VSphereError as exc:
            if exc.fault in ("NotSupported", "NotImplemented", "MethodNotFound", "MethodFault"):
                return None
            raise
        match = _VMX_PATH.match(str(path or ""))
        if match is None:
            return None

        def download() -> bytes:
            datacenter = target.parent
            while datacenter is not None and not isinstance(datacenter, vim.Datacenter):
                datacenter = datacenter.parent
            query = urllib.parse.urlencode(
                {"dsName": match["datastore"], "dcPath": datacenter.name if datacenter else ""}
            )
            url = f"https://{self._server}/folder/{urllib.parse.quote(match['path'])}?{query}"
            request = urllib.request.Request(url, headers={"Cookie": self._si._stub.cookie})
            with urllib.request.urlopen(
                request, context=self._tls, timeout=self._call_timeout
            ) as reply:
                data: bytes = reply.read(64 << 20)
                return data

        return await self._call(op, download, subject)

    async def reconfigure(self, vm: VmRef, spec: vim.vm.ConfigSpec) -> None:
        """Apply a ``ReconfigVM_Task`` spec to the VM. :raises VSphereError:"""
        target = self._vm(vm)
        subject = _subject(vm)
        task = await self._call("vsphere.reconfigure", lambda: target.Reconfigure(spec), subject)
        await self._wait_task(
            "vsphere.reconfigure", task, time_limit=self._task_timeout, subject=subject
        )

    async def relocate(
        self,
        vm: VmRef,
        datastore: str,
        progress: ProgressCallback | None = None,
        disk_datastores: Mapping[str, str] | None = None,
    ) -> VmRef:
        """Storage vMotion the running VM's files to ``datastore``.

        ``disk_datastores`` optionally sends disks elsewhere: .vmx disk key (``scsi0:1``) to
        datastore name; each disk then gets its own locator. ``progress`` receives the task's
        percentage as ``(done, 100)``.

        :raises VSphereError: unknown datastore or disk key, or the migration failed.
        :raises BackendTimeoutError: not done within ``relocate_timeout`` (the task is cancelled).
        """
        target = self._vm(vm)

        def start() -> vim.Task:
            host = target.runtime.host
            if host is None:
                raise VSphereError(
                    f"VM {vm.name} runs on no host",
                    operation="vsphere.relocate",
                    fault="InvalidState",
                )
            destination = self._inventory.host_datastore(host, datastore)
            per_disk = {
                key: self._inventory.host_datastore(host, name)
                for key, name in (disk_datastores or {}).items()
            }
            devices: Sequence[vim.vm.device.VirtualDevice] = (
                target.config.hardware.device if target.config is not None else []
            )
            spec = relocate_spec(vm.name, devices, destination, per_disk)
            return target.Relocate(spec, None)

        subject = f"{_subject(vm)} to {datastore}"
        task = await self._call("vsphere.relocate", start, subject)
        await self._wait_task(
            "vsphere.relocate",
            task,
            time_limit=self._relocate_timeout,
            progress=progress,
            subject=subject,
        )
        ref = await self._call("vsphere.relocate", lambda: self._vm_ref(target))
        logger.info("relocated %s to datastore %s", vm.name, datastore)
        return ref


if TYPE_CHECKING:

    def _implements_protocol(client: PyvmomiVSphereClient) -> VSphereClient:
        """mypy checks here that the client still satisfies the ``VSphereClient`` protocol."""
        return client
