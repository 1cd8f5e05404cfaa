"""Our NFSv3 server vs NFS-Ganesha on loopback, same directory, same client (ours), one run.

Measures sequential read of a 1 GiB file in 1 MiB READs (warm page cache), sequential write of
1 GiB in 1 MiB UNSTABLE WRITEs with a COMMIT at the end, and 4 KiB random reads at queue depth 1
for 20 s. Each figure is the median of ``--runs`` runs. Both servers run as separate processes
(our server via ``liverecovery serve``), so the client never shares a GIL with either.
The last line printed is one JSON object with every figure and the ratio ours/ganesha.

    .venv/bin/python benchmarks/nfs_vs_ganesha.py [--size-mib 1024] [--seconds 20] [--runs 3]
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

from liverecovery.errors import NfsError
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import Stability

MiB = 1 << 20


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


def start_ganesha(tmp: Path, data: Path) -> tuple[subprocess.Popen[bytes], int, int]:
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
        [shutil.which("ganesha.nfsd") or "/usr/bin/ganesha.nfsd", "-F", "-f", str(conf),
         "-L", str(tmp / "ganesha.log"), "-p", str(tmp / "ganesha.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_port(nfs_port, proc)
    wait_port(mount_port, proc)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib * MiB
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "size_mib": args.size_mib,
        "random_seconds": args.seconds,
        "runs": args.runs,
        "nproc": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="nfsbench-") as tmpname:
        tmp = Path(tmpname)
        data = tmp / "data"
        data.mkdir()
        with open(data / "read.bin", "wb") as f:
            block = os.urandom(MiB)
            for _ in range(args.size_mib):
                f.write(block)
        rpcbind = start_rpcbind()
        try:
            ours, port = start_ours(tmp, data)
            try:
                results["ours"] = anyio.run(
                    measure, port, port, str(data), size, args.seconds, args.runs
                )
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
        finally:
            if rpcbind is not None:
                rpcbind.terminate()
                rpcbind.wait()
    results["ratio"] = {
        k: round(results["ours"][k] / results["ganesha"][k], 3) for k in results["ours"]
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
