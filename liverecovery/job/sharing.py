"""Exports and datastore mounts shared by every job recovering to the same ESX host.

The seed's step 8: the ESX host unexports and unmounts "if there are no other paths exported to
the ESX server". So each host gets one export (``<export_root>/<host>``) and one NFS datastore
mount; each job publishes its VM folder inside them. Both are reference-counted by job id, and
the real export/mount is created by the first job and removed by the last.
"""

from __future__ import annotations

import logging
import re

import anyio
import attrs

from liverecovery.backends import NfsExporter, VSphereClient, VSphereInventory
from liverecovery.errors import BackendError, JobStateError, VSphereError

__all__ = ["HostShares", "datastore_name_for", "export_path_for"]

_log = logging.getLogger(__name__)
_ASK_BOUND_S = 5.0
"""How long vSphere is asked whether a mount that failed happened anyway."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(host: str) -> str:
    return _UNSAFE.sub("-", host).strip("-") or "host"


def export_path_for(export_root: str, host: str) -> str:
    """The NFS export path for ``host``: the same for every job to that host."""
    return f"{export_root.rstrip('/')}/{_slug(host)}"


def datastore_name_for(host: str) -> str:
    """The datastore name the export is mounted as on ``host``."""
    return f"liverecovery-{_slug(host)}"


@attrs.define
class _HostShare:
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)
    export_path: str | None = None
    export_users: set[str] = attrs.field(factory=set)
    datastore: str | None = None
    mount_users: set[str] = attrs.field(factory=set)


class HostShares:
    """Reference counts of the per-host export and mount, keyed by job id."""

    def __init__(
        self,
        exporter: NfsExporter,
        vsphere: VSphereClient,
        export_root: str,
        inventory: VSphereInventory | None = None,
    ) -> None:
        self._exporter = exporter
        self._vsphere = vsphere
        self._inventory = inventory
        self._export_root = export_root
        self._hosts: dict[str, _HostShare] = {}

    def _share(self, host: str) -> _HostShare:
        return self._hosts.setdefault(host, _HostShare())

    async def acquire_export(self, host: str, client: str, job_id: str) -> str:
        """The host's export path, creating the export for the first job.

        :raises BackendError: the exporter failed; the job holds nothing then.
        """
        share = self._share(host)
        async with share.lock:
            if share.export_path is None:
                path = export_path_for(self._export_root, host)
                await self._exporter.export(path, (client,))
                share.export_path = path
            share.export_users.add(job_id)
            return share.export_path

    async def release_export(self, host: str, job_id: str) -> bool:
        """Drop the job's use of the export; remove it when no job uses it. True if removed."""
        share = self._share(host)
        async with share.lock:
            share.export_users.discard(job_id)
            if share.export_users or share.export_path is None:
                return False
            await self._exporter.unexport(share.export_path)
            share.export_path = None
            return True

    async def acquire_mount(self, host: str, remote_host: str, job_id: str) -> str:
        """The host's datastore name, mounting the export for the first job."""
        share = self._share(host)
        async with share.lock:
            if share.datastore is None:
                if share.export_path is None:
                    raise JobStateError(f"no export for host {host!r} to mount")
                name = datastore_name_for(host)
                try:
                    share.datastore = await self._vsphere.mount_nfs_datastore(
                        host, remote_host, share.export_path, name
                    )
                except BaseException as exc:
                    if not (isinstance(exc, VSphereError) and exc.fault == "DuplicateName"):
                        with anyio.CancelScope(shield=True):
                            await self._unmount_if_mounted_anyway(host, name)
                    raise
            share.mount_users.add(job_id)
            return share.datastore

    async def _unmount_if_mounted_anyway(self, host: str, name: str) -> None:
        """A mount cut short or answered with an error (a lost reply) may have happened all
        the same: no job holds it, so it is unmounted (ESXi refuses while a VM uses it).
        A name that was taken before the call (``DuplicateName``) is never touched."""
        if self._inventory is None:
            return
        with anyio.move_on_after(_ASK_BOUND_S):
            try:
                if name in await self._inventory.nfs_datastores(host):
                    await self._vsphere.unmount_datastore(host, name)
            except BackendError as exc:
                _log.warning(
                    "the mount of %s on %s failed and may have happened anyway; it could not "
                    "be checked or undone: %s",
                    name,
                    host,
                    exc,
                )

    async def release_mount(self, host: str, job_id: str) -> bool:
        """Drop the job's use of the mount; unmount when no job uses it. True if unmounted."""
        share = self._share(host)
        async with share.lock:
            share.mount_users.discard(job_id)
            if share.mount_users or share.datastore is None:
                return False
            await self._vsphere.unmount_datastore(host, share.datastore)
            share.datastore = None
            return True

    async def adopt_export(self, host: str, client: str, job_id: str, path: str) -> bool:
        """After a restart: take the job's share of the host's export at ``path``, creating the
        export again if the exporter no longer has it (same path, so the same file handles).
        True if it had to be created."""
        share = self._share(host)
        async with share.lock:
            created = False
            if path not in self._exporter.exports():
                await self._exporter.export(path, (client,))
                created = True
            share.export_path = path
            share.export_users.add(job_id)
            return created

    async def adopt_mount(
        self, host: str, remote_host: str, job_id: str, datastore: str, mounted: bool
    ) -> None:
        """After a restart: take the job's share of ``datastore``, mounting it only if the host
        no longer has it (``mounted`` is what the host reports)."""
        share = self._share(host)
        async with share.lock:
            if not mounted and share.datastore is None:
                if share.export_path is None:
                    raise JobStateError(f"no export for host {host!r} to mount")
                await self._vsphere.mount_nfs_datastore(
                    host, remote_host, share.export_path, datastore
                )
            share.datastore = datastore
            share.mount_users.add(job_id)

    def users(self, host: str) -> tuple[frozenset[str], frozenset[str]]:
        """Job ids using the host's export and mount."""
        share = self._hosts.get(host) or _HostShare()
        return frozenset(share.export_users), frozenset(share.mount_users)
