"""Our NFSv3 server vs NFS-Ganesha on loopback, same directory, same client (ours), one run.

Measures sequential read of a 1 GiB file in 1 MiB READs (warm page cache), sequential write of
1 GiB in 1 MiB UNSTABLE WRITEs with a COMMIT at the end, and 4 KiB random reads at queue depth 1
for 20 s. Each figure is the median of ``--runs`` runs. Both servers run as separate processes
(our server via ``liverecovery serve``), so the client never shares a GIL with either.

Scenario "virtual" (what matters most for the product): ESXi running the VM from its backup.
Our server serves the VM's ``-flat.vmdk`` through the virtual datastore as
``liverecovery.sim.embedded`` builds it (``VirtualDatastore`` > ``FlatDisk`` > durable
``WriteOverlay`` over a warm ``DiskBlockCache`` of a monolithicSparse backup); Ganesha serves the
same bytes as a plain raw file. 64 KiB random READs, then 64 KiB random FILE_SYNC WRITEs (ESXi
writes to NFS datastores synchronously), at queue depths 1, 4 and 16 on one connection.

The last line printed is one JSON object with every figure and the ratio ours/ganesha.

    .venv/bin/python benchmarks/nfs_vs_ganesha.py [--size-mib 1024] [--seconds 20] [--runs 3]
        [--virtual-mib 256] [--virtual-seconds 3] [--scenarios plain,virtual]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.datastore.builder import durable_overlay
from liverecovery.datastore.flatdisk import DiskOverlay, FlatDisk
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.errors import NfsError
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer, event_loop_options
from liverecovery.testing.samples import expected_read, sample_vm

MiB = 1 << 20
VIRTUAL_BLOCK = 64 * 1024
QUEUE_DEPTHS = (1, 4, 16)
FLAT_NAME = "bench-flat.vmdk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def start_rpcbind() -> subprocess.Popen[bytes] | None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 111)) == 0:
            return None
    proc = subprocess.Popen([shutil.which("rpcbind") or "/usr/sbin/rpcbind", "-f", "-w"])
    time.sleep(0.5)
    return proc


def start_ganesha(
    tmp: Path, data: Path, wrapper: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Ganesha over ``data``; ``wrapper`` runs it under another program (valgrind)."""
    nfs_port, mount_port = free_port(), free_port()
    conf = tmp / "ganesha.conf"
    conf.write_text(
        f"""
NFS_CORE_PARAM {{ NFS_Port = {nfs_port}; MNT_Port = {mount_port}; Bind_addr = 127.0.0.1;
  Protocols = 3; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; }}
NFSV4 {{ Graceless = true; }}
EXPORT {{ Export_Id = 1; Path = {data}; Pseudo = /export; Protocols = 3; Transports = TCP;
  Access_Type = RW; Squash = No_Root_Squash; Sectype = sys; FSAL {{ Name = VFS; }} }}
"""
    )
    proc = subprocess.Popen(
        [*(wrapper or []), shutil.which("ganesha.nfsd") or "/usr/bin/ganesha.nfsd", "-F", "-f", str(conf),
         "-L", str(tmp / "ganesha.log"), "-p", str(tmp / "ganesha.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_port(nfs_port, proc, timeout=300 if wrapper else 30)
    wait_port(mount_port, proc, timeout=300 if wrapper else 30)
    return proc, nfs_port, mount_port


def start_ours(tmp: Path, data: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverecovery.cli", "serve", str(data), "--listen",
         f"127.0.0.1:{port}", "--allow", "127.0.0.1", "--state-dir", str(tmp / "state")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, proc)
    return proc, port


def settle() -> None:
    """Write back every dirty page first: writeback of the test files (or of the previous
    server's writes) must not slow down whichever server is measured next."""
    os.sync()
    time.sleep(1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(
        signal.SIGINT if "liverecovery" in " ".join(map(str, proc.args)) else signal.SIGTERM
    )  # type: ignore[arg-type]
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def measure(
    port: int, mount_port: int, path: str, size: int, seconds: float, runs: int
) -> dict[str, float]:
    settle()
    async with await NfsClient.connect("127.0.0.1", port, mount_port=mount_port) as c:
        root = await c.mount(path)
        src, _ = await c.lookup(root, "read.bin")
        await sequential_read(c, src, size)  # warm the page cache
        reads, writes, iops = [], [], []
        for _ in range(runs):
            t = await sequential_read(c, src, size)
            reads.append(size / MiB / t)
            with_name = "write.bin"
            with contextlib.suppress(NfsError):
                await c.remove(root, with_name)
            dst, _ = await c.create(root, with_name)
            t0 = time.perf_counter()
            block = os.urandom(MiB)
            for off in range(0, size, MiB):
                await c.write(dst, off, block, Stability.UNSTABLE)
            await c.commit(dst)
            writes.append(size / MiB / (time.perf_counter() - t0))
            iops.append(await random_reads(c, src, size, seconds))
        return {
            "seq_read_MiBps": statistics.median(reads),
            "seq_write_MiBps": statistics.median(writes),
            "rand_read_4k_iops": statistics.median(iops),
        }


async def sequential_read(c: NfsClient, fh: bytes, size: int) -> float:
    t0 = time.perf_counter()
    off = 0
    while off < size:
        data, _ = await c.read(fh, off, MiB)
        if len(data) != min(MiB, size - off):
            raise RuntimeError(f"short read at {off}: {len(data)}")
        off += len(data)
    return time.perf_counter() - t0


async def random_reads(c: NfsClient, fh: bytes, size: int, seconds: float) -> float:
    rng = random.Random(1)
    blocks = size // 4096
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(64):
            data, _ = await c.read(fh, rng.randrange(blocks) * 4096, 4096)
            if len(data) != 4096:
                raise RuntimeError("short 4 KiB read")
        n += 64
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - t0)


# -- scenario "virtual": the VM's flat disk through the virtual datastore ----------------------


def make_backup(work: Path, size: int) -> bytes:
    """A monolithicSparse backup of a ``size``-byte disk full of data; returns its raw bytes."""
    vm = sample_vm("bench", disk_sizes=(size,), head=size)
    vm.write(work / "backup")
    return expected_read(size, vm.disks[0][1], 0, size)


async def serve_virtual(work: Path, port: int) -> None:
    """Serve ``/vm`` as the embedded environment builds it, until SIGTERM."""
    catalog = DirectoryCatalog(work / "backup")
    point = await catalog.restore_point("bench")
    cache = await DiskBlockCache.open(work / "cache", block_size=MiB)
    reader = await catalog.open_disk(point, point.disks[0])

    async def overlay() -> DiskOverlay:
        return await durable_overlay(work / "overlay", reader.size)

    flat = await FlatDisk.open(source="bench/disk", reader=reader, cache=cache, overlay=overlay)
    (work / "folder").mkdir(exist_ok=True)
    ds = VirtualDatastore(LocalFilesystem(work / "folder"), {FLAT_NAME: flat})
    try:
        async with NfsServer(work / "state", port=port) as server:
            await server.export_filesystem("/vm", ds, ["127.0.0.1"])
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
    finally:
        await ds.aclose()
        await cache.aclose()
        await catalog.aclose()


def start_virtual(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-virtual", str(tmp), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port, proc, timeout=120)
    return proc, port


async def random_io(
    c: NfsClient, fh: bytes, size: int, depth: int, seconds: float, write: bool
) -> float:
    """64 KiB random READs (or FILE_SYNC WRITEs) by ``depth`` concurrent callers: ops per s."""
    blocks = size // VIRTUAL_BLOCK
    done = 0
    deadline = time.perf_counter() + seconds

    async def one(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        payload = os.urandom(VIRTUAL_BLOCK)
        while time.perf_counter() < deadline:
            offset = rng.randrange(blocks) * VIRTUAL_BLOCK
            if write:
                await c.write(fh, offset, payload, Stability.FILE_SYNC)
            else:
                data, _ = await c.read(fh, offset, VIRTUAL_BLOCK)
                if len(data) != VIRTUAL_BLOCK:
                    raise RuntimeError(f"short 64 KiB read at {offset}")
            done += 1

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(depth):
            tg.start_soon(one, i)
    return done / (time.perf_counter() - t0)


async def measure_virtual(
    port: int, mount_port: int, path: str, name: str, size: int, seconds: float, runs: int
) -> dict[str, float]:
    settle()
    async with await NfsClient.connect("127.0.0.1", port, mount_port=mount_port) as c:
        root = await c.mount(path)
        fh, _ = await c.lookup(root, name)
        await sequential_read(c, fh, size)  # warm: every block in our cache / Ganesha's page cache
        out: dict[str, float] = {}
        for write in (False, True):
            for depth in QUEUE_DEPTHS:
                figures = [await random_io(c, fh, size, depth, seconds, write) for _ in range(runs)]
                out[f"{'write' if write else 'read'}_64k_qd{depth}_iops"] = statistics.median(
                    figures
                )
        return out


def run_virtual(tmp: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    size = args.virtual_mib * MiB
    raw = make_backup(tmp, size)
    plain = tmp / "plain"
    plain.mkdir()
    (plain / FLAT_NAME).write_bytes(raw)
    del raw
    ours, port = start_virtual(tmp)
    try:
        results["virtual_ours"] = anyio.run(
            measure_virtual, port, port, "/vm", FLAT_NAME, size, args.virtual_seconds, args.runs
        )
    finally:
        stop(ours)
    print("virtual ours", results["virtual_ours"], flush=True)
    gproc, gport, gmount = start_ganesha(tmp, plain)
    try:
        results["virtual_ganesha"] = anyio.run(
            measure_virtual,
            gport,
            gmount,
            str(plain),
            FLAT_NAME,
            size,
            args.virtual_seconds,
            args.runs,
        )
    finally:
        stop(gproc)
    print("virtual ganesha", results["virtual_ganesha"], flush=True)
    results["virtual_ratio"] = {
        k: round(results["virtual_ours"][k] / results["virtual_ganesha"][k], 3)
        for k in results["virtual_ours"]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--virtual-mib", type=int, default=256)
    ap.add_argument("--virtual-seconds", type=float, default=3.0)
    ap.add_argument("--scenarios", default="plain,virtual")
    ap.add_argument("--serve-virtual", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_virtual is not None:
        anyio.run(
            serve_virtual, args.serve_virtual, args.port, backend_options=event_loop_options()
        )
        return
    scenarios = set(args.scenarios.split(","))
    size = args.size_mib * MiB
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "size_mib": args.size_mib,
        "random_seconds": args.seconds,
        "runs": args.runs,
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="nfsbench-") as tmpname:
        tmp = Path(tmpname)
        rpcbind = start_rpcbind()
        try:
            if "plain" in scenarios:
                run_plain(tmp, args, size, results)
            if "virtual" in scenarios:
                run_virtual(tmp, args, results)
        finally:
            if rpcbind is not None:
                rpcbind.terminate()
                rpcbind.wait()
    results["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(results))


def run_plain(tmp: Path, args: argparse.Namespace, size: int, results: dict[str, Any]) -> None:
    data = tmp / "data"
    data.mkdir()
    with open(data / "read.bin", "wb") as f:
        block = os.urandom(MiB)
        for _ in range(args.size_mib):
            f.write(block)
    ours, port = start_ours(tmp, data)
    try:
        results["ours"] = anyio.run(measure, port, port, str(data), size, args.seconds, args.runs)
    finally:
        stop(ours)
    print("ours", results["ours"], flush=True)
    gproc, gport, gmount = start_ganesha(tmp, data)
    try:
        results["ganesha"] = anyio.run(
            measure, gport, gmount, str(data), size, args.seconds, args.runs
        )
    finally:
        stop(gproc)
    print("ganesha", results["ganesha"], flush=True)
    results["ratio"] = {
        k: round(results["ours"][k] / results["ganesha"][k], 3) for k in results["ours"]
    }
    (data / "read.bin").unlink()


if __name__ == "__main__":
    main()
