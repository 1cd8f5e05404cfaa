"""Our NFSv3 server vs NFS-Ganesha with a C client that keeps READs in flight, as ESXi does.

The client is ``benchmarks/nfs_inflight.c`` (libnfs's async API, one connection), compiled here
with gcc. Both servers run as their own processes over the same directory on loopback, started
once and measured alternately (ours on each event loop asked for, then Ganesha) in every run:

- random READs of 4 KiB, 64 KiB and 1 MiB with ``--depth`` (32) in flight for ``--seconds``;
- the file end to end in 1 MiB READs, 32 in flight (what a storage vMotion does);
- the file end to end with ``nfs-cat`` (libnfs-utils: one READ at a time).

For each, operations per second (or MiB/s) and the server's CPU per operation: its process CPU
time (every thread, from /proc) over the READs alone / operations. Each figure is the median of
``--runs``. ``--callgrind N`` instead counts the server's instructions per 4 KiB READ (N READs,
32 in flight) under valgrind's callgrind: repeatable on a loaded machine, where CPU time is not.

The last line printed is one JSON object with every figure and the ratios ours/Ganesha.

    .venv/bin/python benchmarks/nfs_inflight.py [--size-mib 1024] [--seconds 5] [--runs 3]
        [--loops uvloop,asyncio] [--callgrind 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from nfs_vs_ganesha import (
    FLAT_NAME,
    free_port,
    start_ganesha,
    start_rpcbind,
    start_virtual,
    stop,
    wait_port,
)

from liverecovery.testing.samples import sample_vm

MiB = 1 << 20
KiB = 1 << 10
RANDOM_SIZES = {"4k": 4 * KiB, "64k": 64 * KiB, "256k": 256 * KiB, "1m": MiB}
TICK = os.sysconf("SC_CLK_TCK")


def compile_client(tmp: Path) -> Path:
    exe = tmp / "nfs_inflight"
    source = Path(__file__).with_name("nfs_inflight.c")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(source), "-lnfs"], check=True)
    return exe


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start_ours(
    tmp: Path, data: Path, loop: str, wrapper: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ, LIVERECOVERY_LOOP=loop)
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "liverecovery.cli", "serve", str(data), "--listen",
         f"127.0.0.1:{port}", "--allow", "127.0.0.1", "--state-dir", str(tmp / f"state-{loop}")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    wait_port(port, proc, timeout=300)
    return proc, port


class Server:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, mount: int) -> None:
        self.name, self.proc, self.port, self.mount = name, proc, port, mount

    def url(self, data: Path, name: str) -> str:
        return f"nfs://127.0.0.1{data}/{name}?version=3&nfsport={self.port}&mountport={self.mount}"


def run_client(
    exe: Path,
    server: Server,
    url: str,
    block: int,
    depth: int,
    mode: str,
    limit: float,
    between: tuple[Any, Any] | None = None,
) -> dict[str, float]:
    """One run of the C client; the server's CPU seconds over the READs alone."""
    proc = subprocess.Popen(
        [str(exe), url, str(block), str(depth), mode, str(limit)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.wait()
        raise RuntimeError(f"client did not start against {server.name}")
    if between is not None:
        between[0]()
    cpu0 = cpu_seconds(server.proc.pid)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    cpu1 = cpu_seconds(server.proc.pid)
    if between is not None:
        between[1]()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"client failed against {server.name}")
    result: dict[str, float] = json.loads(line)
    result["server_cpu_s"] = cpu1 - cpu0
    result["client_cpu_s"] = usage.ru_utime + usage.ru_stime  # (mount and open included)
    return result


def nfs_cat(server: Server, url: str, size: int) -> dict[str, float]:
    cpu0 = cpu_seconds(server.proc.pid)
    t0 = time.perf_counter()
    subprocess.run(
        [shutil.which("nfs-cat") or "nfs-cat", url], stdout=subprocess.DEVNULL, check=True
    )
    seconds = time.perf_counter() - t0
    return {
        "ops": size / MiB, "bytes": size, "seconds": seconds,
        "server_cpu_s": cpu_seconds(server.proc.pid) - cpu0,
    }  # fmt: skip


def figures(r: dict[str, float]) -> dict[str, float]:
    return {
        "ops_s": r["ops"] / r["seconds"],
        "MiB_s": r["bytes"] / MiB / r["seconds"],
        "cpu_us_per_op": r["server_cpu_s"] / max(r["ops"], 1) * 1e6,
        "client_cpu_us_per_op": r.get("client_cpu_s", 0.0) / max(r["ops"], 1) * 1e6,
    }


def measure(
    args: argparse.Namespace, exe: Path, servers: list[Server], data: Path, size: int
) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {s.name: {} for s in servers}
    for run in range(args.runs):
        print(f"run {run + 1} load {os.getloadavg()[0]:.2f}", flush=True)
        for server in servers:
            url = server.url(data, "read.bin")
            results = runs[server.name]
            for label, block in RANDOM_SIZES.items():
                if f"rand_{label}" in args.scenarios:
                    r = run_client(exe, server, url, block, args.depth, "rand", args.seconds)
                    results.setdefault(f"rand_{label}_qd{args.depth}", []).append(figures(r))
            if "seq" in args.scenarios:
                r = run_client(exe, server, url, MiB, args.depth, "seq", 1)
                results.setdefault(f"seq_1m_qd{args.depth}", []).append(figures(r))
            if "nfs_cat" in args.scenarios:
                results.setdefault("nfs_cat", []).append(figures(nfs_cat(server, url, size)))
            print(server.name, {k: v[-1] for k, v in results.items()}, flush=True)
    out: dict[str, Any] = {}
    for name, results in runs.items():
        out[name] = {
            scenario: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for scenario, rs in results.items()
        }
    return out


def callgrind_counts(
    args: argparse.Namespace, exe: Path, tmp: Path, data: Path
) -> dict[str, float]:
    """Instructions per 4 KiB READ of each server, under callgrind (counters zeroed after
    mount and open, dumped after the READs)."""
    counts: dict[str, float] = {}
    for name in [*args.loops.split(","), "ganesha"]:
        out = tmp / f"callgrind.{name}"
        wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
        if name == "ganesha":
            proc, port, mount = start_ganesha(tmp, data, wrapper=wrapper)
        else:
            proc, port = start_ours(tmp, data, name, wrapper)
            mount = port
        server = Server(name, proc, port, mount)
        try:
            pid = str(proc.pid)

            def zero(pid: str = pid) -> None:
                subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)

            def dump(pid: str = pid) -> None:
                subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)

            url = server.url(data, "read.bin")
            run_client(exe, server, url, 4 * KiB, args.depth, "randn", 200)  # warm up
            r = run_client(
                exe, server, url, 4 * KiB, args.depth, "randn", args.callgrind, (zero, dump)
            )
            dumps = sorted(tmp.glob(f"callgrind.{name}.{pid}.*"), key=os.path.getmtime)
            text = dumps[-1].read_text(errors="replace")
            match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            assert match is not None, dumps[-1]
            counts[name] = int(match.group(1)) / r["ops"]
            print(name, "instructions per 4 KiB READ", round(counts[name]), flush=True)
        finally:
            stop(proc)
    return counts


def restore(args: argparse.Namespace) -> dict[str, Any]:
    """The server's side of a full restore: a monolithicSparse backup of SIZE GiB holding DATA
    GiB (its head) served through the virtual datastore (``nfs_vs_ganesha.serve_virtual``:
    flat disk, block cache, durable overlay), read end to end by the C client in 1 MiB READs,
    ``--depth`` in flight, as ESXi's storage vMotion does; first pass cold (every block from the
    backup), second warm."""
    out: dict[str, Any] = {
        "benchmark": "nfs_inflight_restore",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.uname().machine} {os.cpu_count()} cpus",
        "depth": args.depth,
        "loop": os.environ.get("LIVERECOVERY_LOOP", "uvloop if installed"),
        "loadavg_start": os.getloadavg()[0],
        "disks": [],
    }
    for spec in args.restore.split(","):
        size_gib, data_gib = (float(x) for x in spec.split(":"))
        size, data = int(size_gib * 1024) * MiB, int(data_gib * 1024) * MiB
        with tempfile.TemporaryDirectory(prefix="nfsrestore-") as tmpname:
            tmp = Path(tmpname)
            exe = compile_client(tmp)
            sample_vm("bench", disk_sizes=(size,), head=data).write(tmp / "backup")
            os.sync()
            proc, port = start_virtual(tmp)
            server = Server("ours", proc, port, port)
            url = f"nfs://127.0.0.1/vm/{FLAT_NAME}?version=3&nfsport={port}&mountport={port}"
            try:
                passes = {}
                for name in args.restore_passes.split(","):
                    r = run_client(exe, server, url, MiB, args.depth, "seq", 1)
                    passes[name] = {
                        "seconds": r["seconds"],
                        "GB_s": r["bytes"] / r["seconds"] / 1e9,
                        "server_cpu_s": r["server_cpu_s"],
                        "server_cpu_us_per_read": r["server_cpu_s"] / r["ops"] * 1e6,
                        "server_cpu_share": r["server_cpu_s"] / r["seconds"],
                        "client_cpu_s": r["client_cpu_s"],
                        "client_cpu_us_per_read": r["client_cpu_s"] / r["ops"] * 1e6,
                    }
                    print(spec, name, passes[name], flush=True)
            finally:
                stop(proc)
            out["disks"].append({"size_gib": size_gib, "data_gib": data_gib, **passes})
    out["loadavg_end"] = os.getloadavg()[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--loops", default="uvloop,asyncio", help="our server's event loops")
    ap.add_argument(
        "--scenarios",
        type=lambda s: s.split(","),
        default=["rand_4k", "rand_64k", "rand_1m", "seq", "nfs_cat"],
    )
    ap.add_argument("--callgrind", type=int, default=0, help="READs to count instructions of")
    ap.add_argument(
        "--restore",
        default="",
        help="SIZE_GIB:DATA_GIB,...: instead, read sparse flat disks served as a recovery serves "
        "them end to end (the storage vMotion's side of a full restore)",
    )
    ap.add_argument("--restore-passes", default="cold,warm", help="cold, or cold,warm")
    args = ap.parse_args()
    if args.restore:
        print(json.dumps(restore(args)))
        return
    size = args.size_mib * MiB
    results: dict[str, Any] = {
        "benchmark": "nfs_inflight",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.uname().machine} {os.cpu_count()} cpus",
        "size_mib": args.size_mib,
        "seconds": args.seconds,
        "runs": args.runs,
        "depth": args.depth,
        "loadavg_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="nfsinflight-") as tmpname:
        tmp = Path(tmpname)
        exe = compile_client(tmp)
        data = tmp / "data"
        data.mkdir()
        with open(data / "read.bin", "wb") as f:
            block = os.urandom(MiB)
            for _ in range(args.size_mib):
                f.write(block)
        os.sync()
        with open(data / "read.bin", "rb") as f:  # every server starts with it in the page cache
            while f.read(8 * MiB):
                pass
        rpcbind = start_rpcbind()
        try:
            if args.callgrind:
                results["instructions_per_4k_read"] = counts = callgrind_counts(
                    args, exe, tmp, data
                )
                results["instructions_ratio"] = {
                    loop: round(counts[loop] / counts["ganesha"], 3)
                    for loop in args.loops.split(",")
                }
            else:
                servers: list[Server] = []
                try:
                    for loop in args.loops.split(","):
                        proc, port = start_ours(tmp, data, loop, [])
                        servers.append(Server(loop, proc, port, port))
                    gproc, gport, gmount = start_ganesha(tmp, data)
                    servers.append(Server("ganesha", gproc, gport, gmount))
                    results.update(measure(args, exe, servers, data, size))
                finally:
                    for server in servers:
                        stop(server.proc)
                results["ratio"] = {
                    loop: {
                        scenario: {
                            "throughput": round(
                                fig["ops_s"] / results["ganesha"][scenario]["ops_s"], 3
                            ),
                            "cpu_per_op": round(
                                fig["cpu_us_per_op"]
                                / results["ganesha"][scenario]["cpu_us_per_op"],
                                3,
                            ),
                        }
                        for scenario, fig in results[loop].items()
                    }
                    for loop in args.loops.split(",")
                }
        finally:
            if rpcbind is not None:
                rpcbind.terminate()
                rpcbind.wait()
    results["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
