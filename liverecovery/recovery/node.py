"""One serving node of several over one store: owning a service address, or taking it over.

A node serves its VMs on a service address (``Settings.nfs_address``, a movable address) that it
holds by a lease in the shared state (``Settings.shared_state``, docs/scale-out.md). Everything
another node needs to take the address over is written there as it happens: the NFS handle key
and export registry (``cluster/node_state.py``), every job journal record before the job acts
on it (``cluster/journals.py``: a record announcing a registration or a power-on is in the
store before vCenter is asked, so the node taking over knows of it), the
write overlays and the VM folders (``datastore/overlay_store.py``, ``datastore/folder_store.py``,
under the lease's epoch). ``serving_node`` wires these from ``Settings`` around a
``LiveRecovery``:

- ``takeover=False``: take the address's lease (refused, naming the holder, while another node
  holds it), then serve as usual; jobs started on the node are mirrored.
- ``takeover=True`` (a standby): wait until the holder's lease has expired on this node's clock,
  take it with the next epoch, install the handle key and export registry, restore the journals
  into this node's own results folder, bind the address and ``resume`` every job: the ESX host's
  hard mount reconnects with the same file handles and its VMs keep running.

If the node loses its lease (another node took it, or it could not renew in time) it fences
itself: it writes nothing more to the shared state, its jobs are abandoned (no vSphere call,
nothing undone: ``LiveRecovery.abandon``), its NFS server closes at once and the node's block
ends; the VMs are the new owner's (``ServingNode.fenced`` says why). Binding and dropping the address on the
network is the site's (pacemaker's IPaddr2 or the like, as NFS-Ganesha HA does); on loopback any
127.x address is local.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import attrs

from liverecovery.backends import CatalogReader, VSphereClient
from liverecovery.catalog.shared_state import open_shared_state
from liverecovery.cluster.journals import JournalMirror, restore_journals
from liverecovery.cluster.lease import LeaseHolder, LeaseWatcher
from liverecovery.cluster.node_state import ExportsMirror, install_node_state
from liverecovery.config import Settings
from liverecovery.datastore.folder_store import store_backed_folders
from liverecovery.datastore.overlay_store import store_backed_overlays
from liverecovery.errors import JobStateError, SettingsError
from liverecovery.job.job import RecoveryJob
from liverecovery.job.journal import journal_dir
from liverecovery.recovery.assembly import VSphereFactory, assemble
from liverecovery.recovery.live import LiveRecovery

__all__ = ["ServingNode", "node_problems", "serving_node"]


def node_problems(settings: Settings) -> list[str]:
    """What keeps ``settings`` from running a serving node (pure; empty: nothing)."""
    problems = []
    if not settings.shared_state:
        problems.append("shared_state: where the nodes share their state (s3://... or a folder)")
    if not settings.nfs_address:
        problems.append("nfs_address: the service address this node holds (a movable address)")
    if not settings.node_name:
        problems.append("node_name: this node's name")
    return problems


@attrs.define
class ServingNode:
    """A node serving on its service address: its ``LiveRecovery``, the lease's epoch, the
    jobs it resumed on taking the address over, and why it fenced itself (empty: it did not)."""

    recovery: LiveRecovery
    address: str
    epoch: int
    resumed: tuple[RecoveryJob, ...] = ()
    fenced: str = ""


@asynccontextmanager
async def serving_node(
    settings: Settings,
    *,
    vsphere: VSphereClient | VSphereFactory,
    catalog: CatalogReader | None = None,
    takeover: bool = False,
    poll_s: float = 1.0,
    nfs_state_dir: Path | None = None,
) -> AsyncIterator[ServingNode]:
    """Hold (or, ``takeover``, wait for and take) the service address, and serve on it.

    :raises SettingsError: ``node_problems`` found something.
    :raises JobStateError: not ``takeover`` and another node holds the address's lease.
    """
    if problems := node_problems(settings):
        raise SettingsError("a serving node needs " + "; ".join(problems))
    vip, node = settings.nfs_address, settings.node_name
    state = open_shared_state(settings.shared_state, backups=str(settings.backup_root or ""))
    nfs_state = nfs_state_dir or Path(settings.job_results_dir) / "nfs-state"
    journals = journal_dir(settings.job_results_dir)
    fenced = anyio.Event()

    async def fence() -> None:
        fenced.set()

    holder = LeaseHolder(state, vip, node, lease_s=settings.lease_s, fence=fence)
    if takeover:
        watcher = LeaseWatcher(state, vip, lease_s=settings.lease_s, poll_s=poll_s)
        while not await holder.acquire(await watcher.wait_expired()):
            pass  # another standby won: watch its lease in turn
    elif not await holder.acquire(None):
        raise JobStateError(
            f"the service address {vip} is held by another node (its lease in "
            f"{settings.shared_state}); 'liverecovery standby' takes it over when that node dies"
        )
    assert holder.record is not None
    epoch = holder.record.epoch
    await install_node_state(state, vip, nfs_state)
    if takeover:
        await restore_journals(state, vip, journals)
    mirror = JournalMirror(state, vip, journals, keep_ended=settings.keep_overlay, epoch=epoch)
    async with (
        assemble(
            attrs.evolve(settings, nfs_listen_host=vip),
            vsphere=vsphere,
            catalog=catalog,
            overlay_factory=store_backed_overlays(state, epoch),
            folder_factory=store_backed_folders(state, epoch),
            nfs_state_dir=nfs_state,
        ) as parts,
        anyio.create_task_group() as tg,
    ):
        exports = ExportsMirror(state, vip, nfs_state)
        parts.server.registry.on_change(exports.changed)  # before any export is made
        tg.start_soon(holder.run)
        tg.start_soon(exports.run)
        tg.start_soon(mirror.run)
        lr = LiveRecovery(
            parts.settings,
            parts.backends,
            builder=parts.builder,
            journal_listener=mirror.appended,  # each record in the store before it acts
        )
        lr.assembly = parts
        served = ServingNode(lr, vip, epoch)

        async def on_fence() -> None:
            await fenced.wait()
            served.fenced = holder.reason or "the lease was lost"
            # The new owner owns the jobs now: write nothing more to the shared state, make
            # no vSphere call, undo nothing; free the address at once.
            mirror.close()
            lr.abandon(f"fenced: {served.fenced}")
            await parts.server.aclose()
            tg.cancel_scope.cancel()

        tg.start_soon(on_fence)
        async with lr:
            if takeover:
                served.resumed = tuple(await lr.resume())
            yield served
        tg.cancel_scope.cancel()  # the mirrors stop: the last copy below is the only one
    if not served.fenced:
        await mirror.sync()  # the journals' last records; ended jobs' state leaves the store
