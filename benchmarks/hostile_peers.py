"""What hostile TCP peers cost our NFS server: its RSS before and after each attack.

The server runs in a child process (``liverecovery serve``-like: an ``NfsServer`` exporting a
directory to 127.0.0.1 and, with ``--admit``, a second export to the attacker's 127.0.0.2 so
that its connections are kept and only the per-connection bounds stop it). Attacks, from
127.0.0.2:

- headers: N sockets each announce a 1 MiB record and send 5 bytes of it;
- fragments: one socket sends 64 MiB of empty record fragments;
- idle: N idle sockets.

After each, an allowed client (127.0.0.1) must still get an answer; the script prints the RSS
delta and the answer time, then one JSON line. Run it against another tree with PYTHONPATH.

    .venv/bin/python benchmarks/hostile_peers.py [--sockets 200] [--admit]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVER = r"""
import asyncio, sys
from liverecovery.nfs.server import NfsServer
from liverecovery.nfs.localfs import LocalFilesystem

async def main() -> None:
    root, admit = sys.argv[1], sys.argv[2] == "1"
    async with NfsServer(root + "/state") as server:
        await server.export_filesystem("/export", LocalFilesystem(root + "/data"), ["127.0.0.1"])
        if admit:
            await server.export_filesystem("/decoy", LocalFilesystem(root + "/decoy"), ["127.0.0.2"])
        print(server.port, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rpc_null(port: int, timeout: float = 10.0) -> float:
    """Seconds an allowed client waits for the answer to a NULL call (inf: none)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            body = struct.pack(">IIIIIIIIII", 1, 0, 2, 100003, 3, 0, 0, 0, 0, 0)
            s.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
            if not s.recv(100):
                return float("inf")
    except OSError:
        return float("inf")
    return time.perf_counter() - t0


def attacker(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def attack(kind: str, port: int, n: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    if kind == "headers":
        for _ in range(n):
            try:
                s = attacker(port)
                socks.append(s)
                s.sendall(struct.pack(">I", 0x80000000 | (1 << 20)) + b"12345")
            except OSError:
                continue  # reset by the server
    elif kind == "fragments":
        chunk = b"\0\0\0\0" * 16384
        try:
            s = attacker(port)
            socks.append(s)
            for _ in range((64 << 20) // len(chunk)):
                s.sendall(chunk)
        except OSError:
            pass  # reset by the server
    elif kind == "idle":
        for _ in range(n):
            try:
                socks.append(attacker(port))
            except OSError:
                continue  # reset by the server
    return socks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", type=int, default=200)
    ap.add_argument("--idle-sockets", type=int, default=1100)
    ap.add_argument("--admit", action="store_true", help="export something to the attacker")
    # The server runs under ``ulimit -n 1024``, as the issue measured it.
    args = ap.parse_args()
    out: dict[str, Any] = {"admit": args.admit}
    with tempfile.TemporaryDirectory() as tmp:
        for d in ("data", "decoy"):
            os.mkdir(os.path.join(tmp, d))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, tmp, "1" if args.admit else "0"],
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            for kind, n in (
                ("headers", args.sockets),
                ("fragments", 1),
                ("idle", args.idle_sockets),
            ):
                before = rss_kib(proc.pid)
                socks = attack(kind, port, n)
                time.sleep(1.0)
                after = rss_kib(proc.pid)
                answer = rpc_null(port)
                out[kind] = {
                    "rss_before_kib": before,
                    "rss_after_kib": after,
                    "delta_mib": round((after - before) / 1024, 1),
                    "sockets_connected": len(socks),
                    "server_open_fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
                    "allowed_client_answer_s": round(answer, 4),
                }
                print(kind, out[kind], flush=True)
                for s in socks:
                    s.close()
                time.sleep(0.5)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
            out["server_stderr_bytes"] = len(err.encode())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
