"""One serving node of the loopback takeover test (``test_takeover.py``).

    python run_node.py WORK SOCKET HOST NODE STATE_URL BACKUP_URL start     # owns the VIP
    python run_node.py WORK SOCKET HOST NODE STATE_URL BACKUP_URL standby   # takes it over

Both nodes serve the backup from the store (``ObjectCatalog``), each with its own block cache
(``WORK/cache-NODE``) and NFS state directory (``WORK/nfs-NODE``), on the service address
127.0.0.2. The handle key, the lease of the address and its export registry are in the shared
state in the store (``STATE_URL``); the job journals are mirrored there too. Each node has its
own job results folder (``WORK/results-NODE``: journals, the VM folders the ESX host writes
into, the write overlays): the nodes share nothing but the bucket and the service address. The
overlays and the VM folders' files are written through to the store (``store_backed_overlays``,
``store_backed_folders``: stable writes before the reply, under the node's lease epoch) and
rebuilt from it when opened; a standby node restores the journals from the store into its own
folder (and keeps a copy in ``WORK/restored-journals`` for the test). Credentials come from
the environment (AWS_*).

It prints ``lease <epoch>``, ``journals <n>`` (restored), ``listening <port>``, ``state <name>``, ``resumed <n>``,
``done <state> <error>``, ``forgotten`` (the ended jobs' state deleted from the store) and, if it
loses its lease, ``fenced``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import anyio

from liverecovery import LiveRecovery, RecoverySpec, Settings, StateChanged, Timeouts
from liverecovery.backends import Backends
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.catalog.objects import StoreOptions
from liverecovery.catalog.shared_state import open_shared_state
from liverecovery.cluster.journals import JournalMirror, restore_journals
from liverecovery.cluster.lease import LeaseHolder, LeaseWatcher
from liverecovery.cluster.node_state import ExportsMirror, install_node_state
from liverecovery.datastore.builder import FreBuilder
from liverecovery.datastore.folder_store import store_backed_folders
from liverecovery.datastore.overlay_store import store_backed_overlays
from liverecovery.job.job import RecoveryJob
from liverecovery.job.journal import journal_dir
from liverecovery.nfs.server import NfsServer
from liverecovery.sim.remote import RemoteSimulatedHost

VIP = "127.0.0.2"
LEASE_S = 2.0


async def report(job: RecoveryJob) -> None:
    print(f"state {job.state.value}", flush=True)
    async for event in job.events():
        if isinstance(event, StateChanged):
            print(f"state {event.state.value}", flush=True)
    try:
        summary = await job.wait()
        print(f"done {summary.state.value} -", flush=True)
    except Exception as exc:
        print(f"done {job.state.value} {type(exc).__name__}: {exc}", flush=True)


async def main(argv: list[str]) -> None:
    work, socket, host, node = Path(argv[0]), Path(argv[1]), argv[2], argv[3]
    state_url, backup_url, mode = argv[4], argv[5], argv[6]
    settings = Settings(
        job_results_dir=work / f"results-{node}",
        cache_root=work / f"cache-{node}",
        nfs_address=VIP,
        job_space_floor_bytes=64 << 20,
        cache_min_free_percent=0.0,
        migration_trigger="delay",
        serve_before_migrate_s=1.5,
        compensation_retry_delay_s=0.2,
        progress_interval_s=0.2,
        lease_s=LEASE_S,
        timeouts=Timeouts(migrate=120, power_on=120, register=120, compensation=60),
    )
    state = open_shared_state(state_url, backups=backup_url)
    nfs_state = work / f"nfs-{node}"

    async with anyio.create_task_group() as tg:

        async def fence() -> None:
            await server.aclose()  # listeners and connections closed: the VIP is free
            print(f"fenced {holder.reason}", flush=True)
            tg.cancel_scope.cancel()

        holder = LeaseHolder(state, VIP, node, lease_s=settings.lease_s, fence=fence)
        if mode == "start":
            if not await holder.acquire(None):
                raise SystemExit("the service address is held by another node")
        else:
            watcher = LeaseWatcher(state, VIP, lease_s=settings.lease_s, poll_s=0.1)
            while not await holder.acquire(await watcher.wait_expired()):
                pass  # another node won: watch its lease in turn
        assert holder.record is not None
        print(f"lease {holder.record.epoch}", flush=True)
        await install_node_state(state, VIP, nfs_state)
        journals = journal_dir(settings.job_results_dir)
        if mode != "start":
            # this node's results folder is empty: it resumes from the journals in the store
            # (a copy is kept for the test to compare with the journal A left)
            restored = await restore_journals(state, VIP, journals)
            shutil.copytree(journals, work / "restored-journals")
            print(f"journals {len(restored)}", flush=True)
        port_file = work / "nfs-port"
        port = int(port_file.read_text()) if port_file.exists() else 0
        server = NfsServer(nfs_state, host=VIP, port=port, grace_s=10)
        exports_mirror = ExportsMirror(state, VIP, nfs_state, interval_s=0.1)
        server.registry.on_change(exports_mirror.changed)  # in the store before it is used
        await server.start()
        port_file.write_text(str(server.port))
        print(f"listening {server.port}", flush=True)
        tg.start_soon(holder.run)
        tg.start_soon(exports_mirror.run)
        journal_mirror = JournalMirror(
            state, VIP, journals, interval_s=0.05, keep_ended=settings.keep_overlay
        )
        tg.start_soon(journal_mirror.run)
        vsphere = RemoteSimulatedHost(socket, call_timeout=180)
        await vsphere.set_portmap_port(server.portmap_port)
        cache = await DiskBlockCache.from_settings(settings)
        catalog = ObjectCatalog(backup_url, options=StoreOptions.from_settings(settings))
        backends = Backends(
            exporter=server, catalog=catalog, cache=cache, vsphere=vsphere, inventory=vsphere
        )
        epoch = holder.record.epoch
        builder = FreBuilder(
            cache,
            overlay_factory=store_backed_overlays(state, epoch),
            folder_factory=store_backed_folders(state, epoch),
        )
        async with LiveRecovery(settings, backends, builder=builder) as lr:
            if mode == "start":
                spec = RecoverySpec(
                    vm="vm", esx_host=host, esx_address="127.0.0.1", datastore="datastore1"
                )
                jobs = [await lr.start(spec)]
            else:
                jobs = list(await lr.resume())
                print(f"resumed {len(jobs)}", flush=True)
            async with anyio.create_task_group() as jobs_tg:
                for job in jobs:
                    jobs_tg.start_soon(report, job)
        await journal_mirror.sync()  # the jobs' end: their state in the store is deleted
        print("forgotten", flush=True)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
