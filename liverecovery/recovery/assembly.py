"""One place that assembles a working recovery from ``Settings``.

The parts a live recovery needs besides vSphere: our NFS server listening where the settings say,
the on-disk circular block cache, the catalog (``open_catalog(settings.backup_root)``: a folder or
an ``s3://`` URL, unless one is given) and the File Recovery Enabler's builder (virtual datastores with durable
write overlays, or read-only ones for browsing). ``assemble`` starts them and closes, on the way
out and in reverse order, every part it built; parts the caller passes in stay the caller's.
``LiveRecovery.from_settings`` runs a ``LiveRecovery`` on top of them.

The vSphere client is the caller's choice, so pyVmomi is imported only by a caller that picks
it: a client (the caller keeps it and closes it) or a factory given the started NFS server (for
a host that must know the server's ports; ``assemble`` enters what it returns and leaves it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeAlias

import attrs

from liverecovery.backends import (
    Backends,
    BlockCache,
    CatalogReader,
    VSphereClient,
    VSphereInventory,
)
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.catalog.opening import open_catalog
from liverecovery.config import Settings
from liverecovery.datastore.builder import (
    FolderFactory,
    FreBuilder,
    OverlayFactory,
    durable_overlay,
)
from liverecovery.errors import JobStateError, SettingsError
from liverecovery.nfs.server import NfsServer

__all__ = ["Assembly", "VSphereFactory", "assemble", "start_server"]

VSphereFactory: TypeAlias = Callable[[NfsServer], AbstractAsyncContextManager[VSphereClient]]
"""Builds the vSphere client once the NFS server listens (given the server); entered and left
by ``assemble``."""


@attrs.frozen
class Assembly:
    """The running parts of a recovery (``vsphere`` is None for a browse, which needs none)."""

    settings: Settings
    server: NfsServer
    cache: BlockCache
    catalog: CatalogReader
    builder: FreBuilder
    vsphere: VSphereClient | None

    @property
    def backends(self) -> Backends:
        """The four backends a ``LiveRecovery`` runs on. :raises JobStateError: no vSphere."""
        if self.vsphere is None:
            raise JobStateError("this assembly was started without a vSphere client")
        # Looked up once, here: the pyVmomi client and the simulated host report inventory
        # (what resume reconciles a journal with); an embedder's own client may not.
        inventory = self.vsphere if isinstance(self.vsphere, VSphereInventory) else None
        return Backends(
            exporter=self.server,
            catalog=self.catalog,
            cache=self.cache,
            vsphere=self.vsphere,
            inventory=inventory,
        )


def start_server(settings: Settings, state_dir: Path | None = None) -> NfsServer:
    """Our NFS server as the settings place it (use it with ``async with``); its state (the
    handle key, the export registry) in ``state_dir``, by default ``<job_results_dir>/nfs-state``.
    """
    portmap = settings.portmap_port
    return NfsServer(
        state_dir or Path(settings.job_results_dir) / "nfs-state",
        host=settings.nfs_listen_host,
        port=settings.nfs_port,
        portmap_port=None if portmap == settings.nfs_port else portmap,
        grace_s=settings.nfs_grace_s,
        max_connections=settings.nfs_max_connections,
        max_connections_per_address=settings.nfs_max_connections_per_address,
        idle_timeout=settings.nfs_idle_timeout_s,
        partial_record_timeout=settings.nfs_partial_record_timeout_s,
    )


@asynccontextmanager
async def assemble(
    settings: Settings,
    *,
    vsphere: VSphereClient | VSphereFactory | None,
    catalog: CatalogReader | None = None,
    cache: BlockCache | None = None,
    overlay_factory: OverlayFactory = durable_overlay,
    folder_factory: FolderFactory | None = None,
    read_only: bool = False,
    nfs_state_dir: Path | None = None,
) -> AsyncIterator[Assembly]:
    """Start the NFS server, the block cache, the catalog and the builder; close them after.

    :param vsphere: a client (the caller's), a ``VSphereFactory``, or None (browsing only).
    :param catalog: the backups; by default a ``DirectoryCatalog`` at ``settings.backup_root``.
    :param cache: the block cache; by default the on-disk one the settings describe.
    :param overlay_factory, folder_factory: how the builder keeps a job's writes and its VM
        folder (several serving nodes: written through to the shared state).
    :param read_only: build read-only presentations (no overlays): ``liverecovery browse``.
    :raises SettingsError: no catalog and no ``backup_root``.
    """
    if catalog is None and settings.backup_root is None:
        raise SettingsError("backup_root: where the backups are (or pass a catalog)")
    async with contextlib.AsyncExitStack() as stack:
        if catalog is None:
            assert settings.backup_root is not None
            opened: CatalogReader = await stack.enter_async_context(
                open_catalog(settings.backup_root, settings)
            )
            catalog = opened
        if cache is None:
            disk_cache = await DiskBlockCache.from_settings(settings)
            stack.push_async_callback(disk_cache.aclose)
            cache = disk_cache
        server = await stack.enter_async_context(start_server(settings, nfs_state_dir))
        client: VSphereClient | None
        if vsphere is None or isinstance(vsphere, VSphereClient):
            client = vsphere
        else:
            client = await stack.enter_async_context(vsphere(server))
        builder = FreBuilder(
            cache,
            overlay_factory=overlay_factory,
            folder_factory=folder_factory,
            read_only=read_only,
        )
        yield Assembly(settings, server, cache, catalog, builder, client)
