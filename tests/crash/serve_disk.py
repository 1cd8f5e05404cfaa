"""A serving process for the crash tests: one job's virtual datastore behind our NFS server.

    python serve_disk.py WORK   # prints the port, then serves until killed

The job's overlay and the server's state live under WORK, so a restarted process serves the
same handles and reopens the same durable overlays, as a restarted liverecovery would.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from liverecovery.backends import StagingContext
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.config import Settings
from liverecovery.datastore.builder import FreBuilder
from liverecovery.nfs.server import NfsServer
from liverecovery.spec import RecoverySpec


async def main(work: Path) -> None:
    settings = Settings(job_results_dir=work / "results")
    catalog = DirectoryCatalog(work / "backup")
    point = await catalog.restore_point("vm")
    cache = await DiskBlockCache.from_settings(settings)
    ctx = StagingContext(
        job_id="crashjob",
        spec=RecoverySpec(vm="vm", esx_host="h", datastore="d"),
        point=point,
        settings=settings,
        catalog=catalog,
        datastore="lr",
        folder="vm-crashjob",
    )
    staged = await FreBuilder(cache).build(ctx)
    async with NfsServer(work / "nfs-state", host="127.0.0.1") as server:
        await server.export("/lr/h", ["127.0.0.1"])
        await server.publish("/lr/h", "vm-crashjob", staged.filesystem)
        print(server.port, flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]))
