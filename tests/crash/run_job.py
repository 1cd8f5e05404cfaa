"""The process that serves a live recovery, for the whole-job crash test.

    python run_job.py WORK SOCKET HOST start    # starts a recovery of VM "vm" from WORK/backup
    python run_job.py WORK SOCKET HOST resume   # after a crash: LiveRecovery.resume()
    python run_job.py WORK SOCKET HOST follow   # start, followed as ``recover`` does (Ctrl-C)

Real backends throughout: the directory catalog, the on-disk block cache, durable overlays,
our NFS server (on the same port after a restart, as a production server on 2049 would be),
and the simulated ESX host living in another process behind ``SOCKET``. It prints
``state <name>`` on every transition and ``done <state> <error>`` at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from liverecovery import (
    CompensationRan,
    LiveRecovery,
    RecoverySpec,
    Settings,
    StateChanged,
    Timeouts,
)
from liverecovery.backends import Backends
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.datastore.builder import FreBuilder, durable_overlay
from liverecovery.job.job import RecoveryJob
from liverecovery.nfs.server import NfsServer
from liverecovery.sim.remote import RemoteSimulatedHost


async def report(job: RecoveryJob) -> None:
    print(f"state {job.state.value}", flush=True)
    async for event in job.events():
        if isinstance(event, StateChanged):
            print(f"state {event.state.value}", flush=True)
        elif isinstance(event, CompensationRan):
            print(f"undo {event.name} {event.error or 'ok'}", flush=True)
    try:
        summary = await job.wait()
        print(f"done {summary.state.value} -", flush=True)
    except Exception as exc:
        print(f"done {job.state.value} {type(exc).__name__}: {exc}", flush=True)


async def main(work: Path, socket: Path, host: str, mode: str) -> None:
    settings = Settings(
        job_results_dir=work / "results",
        nfs_address="127.0.0.1",
        job_space_floor_bytes=64 << 20,
        migration_trigger="delay",
        serve_before_migrate_s=1.5,
        compensation_retry_delay_s=0.2,
        progress_interval_s=0.2,
        timeouts=Timeouts(migrate=120, power_on=120, register=120, compensation=60),
    )
    port_file = work / "nfs-port"
    port = int(port_file.read_text()) if port_file.exists() else 0
    cache = await DiskBlockCache.from_settings(settings)
    vsphere = RemoteSimulatedHost(socket, call_timeout=180)
    async with NfsServer(work / "nfs-state", host="127.0.0.1", port=port, grace_s=5) as server:
        port_file.write_text(str(server.port))
        await vsphere.set_portmap_port(server.portmap_port)
        backends = Backends(
            exporter=server,
            catalog=DirectoryCatalog(work / "backup"),
            cache=cache,
            vsphere=vsphere,
            inventory=vsphere,
        )
        builder = FreBuilder(cache, overlay_factory=durable_overlay)
        async with LiveRecovery(settings, backends, builder=builder) as lr:
            if mode in ("start", "follow"):
                jobs = [
                    await lr.start(
                        RecoverySpec(
                            vm="vm", esx_host=host, esx_address="127.0.0.1", datastore="datastore1"
                        )
                    )
                ]
            else:
                jobs = list(await lr.resume())
                print(f"resumed {len(jobs)}", flush=True)
            async with anyio.create_task_group() as tg:
                for job in jobs:
                    tg.start_soon(report, job)
                if mode == "follow":
                    # The CLI's own follower: its Ctrl-C handling is what is tested.
                    from liverecovery.cli.recover import _follow

                    await _follow(jobs, False)


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4])
