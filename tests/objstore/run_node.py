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

The wiring is the library's (``liverecovery.recovery.node.serving_node``, what ``liverecovery
standby`` runs); this script only adds the simulated host's socket and its reports.

It prints ``lease <epoch>``, ``journals <n>`` (restored), ``listening <port>``, ``state <name>``, ``resumed <n>``,
``done <state> <error>``, ``forgotten`` (the ended jobs' state deleted from the store) and, if it
loses its lease, ``fenced``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from liverecovery import RecoverySpec, Settings, StateChanged, Timeouts
from liverecovery.backends import VSphereClient
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.catalog.objects import StoreOptions
from liverecovery.job.job import RecoveryJob
from liverecovery.job.journal import journal_dir
from liverecovery.nfs.server import NfsServer
from liverecovery.recovery.node import serving_node
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
    port_file = work / "nfs-port"
    port = int(port_file.read_text()) if port_file.exists() else 0
    settings = Settings(
        job_results_dir=work / f"results-{node}",
        cache_root=work / f"cache-{node}",
        nfs_address=VIP,
        nfs_port=port,
        portmap_port=port,  # the portmapper shares the NFS port
        nfs_grace_s=10,
        shared_state=state_url,
        node_name=node,
        job_space_floor_bytes=64 << 20,
        cache_min_free_percent=0.0,
        migration_trigger="delay",
        serve_before_migrate_s=1.5,
        compensation_retry_delay_s=0.2,
        progress_interval_s=0.2,
        lease_s=LEASE_S,
        timeouts=Timeouts(migrate=120, power_on=120, register=120, compensation=60),
    )

    @asynccontextmanager
    async def simulated_host(server: NfsServer) -> AsyncIterator[VSphereClient]:
        port_file.write_text(str(server.port))
        vsphere = RemoteSimulatedHost(socket, call_timeout=180)
        await vsphere.set_portmap_port(server.portmap_port)
        yield vsphere

    catalog = ObjectCatalog(backup_url, options=StoreOptions.from_settings(settings))
    takeover = mode != "start"
    async with serving_node(
        settings,
        vsphere=simulated_host,
        catalog=catalog,
        takeover=takeover,
        poll_s=0.1,
        nfs_state_dir=work / f"nfs-{node}",
    ) as served:
        print(f"lease {served.epoch}", flush=True)
        lr = served.recovery
        if takeover:
            # this node's results folder was empty: it resumed from the journals in the store
            # (a copy is kept for the test to compare with the journal A left)
            journals = journal_dir(settings.job_results_dir)
            shutil.copytree(journals, work / "restored-journals")
            print(f"journals {len(list(journals.glob('*.journal')))}", flush=True)
            print(f"listening {port_file.read_text()}", flush=True)
            jobs = list(served.resumed)
            print(f"resumed {len(jobs)}", flush=True)
        else:
            print(f"listening {port_file.read_text()}", flush=True)
            spec = RecoverySpec(
                vm="vm", esx_host=host, esx_address="127.0.0.1", datastore="datastore1"
            )
            jobs = [await lr.start(spec)]
        async with anyio.create_task_group() as jobs_tg:
            for job in jobs:
                jobs_tg.start_soon(report, job)
    if served.fenced:
        print(f"fenced {served.fenced}", flush=True)
    else:
        print("forgotten", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
