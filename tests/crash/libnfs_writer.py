"""Writes and reads a file over NFSv3 with a real client, PyPI libnfs, for the crash tests.

    python libnfs_writer.py write URL PATH PLAN  # one op per "go" line on stdin; {"done": n}
    python libnfs_writer.py read URL PATH < slots.json   # prints {"slots": {offset: hex}}

URL names the export (``nfs://127.0.0.1/lr/h?version=3&nfsport=P&mountport=P``), PATH the file
in it. A write plan (a JSON file) is a list of ``["sync", offset, hex]`` (a write through a handle opened
``O_SYNC``: libnfs sends it FILE_SYNC), ``["plain", offset, hex]`` (through a plain handle: libnfs
sends it UNSTABLE) and ``["fsync"]`` (``nfs_fsync`` on the plain handle: a COMMIT of the file).
Each op starts when the parent sends a line, so the parent decides
what is in flight when it kills the server. ``{"done": n}`` is printed only once op ``n``
returned success, so the parent knows exactly what libnfs acknowledged. The binding's file objects drop the return codes of write and fsync, so the
low-level calls are used and every code is checked; a failure prints ``{"failed": n, ...}``.
libnfs holds the GIL while it waits, which is one more reason it runs in its own process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import libnfs


def fail(step: str, code: int, ctx: Any) -> None:
    print(json.dumps({"failed": step, "code": code, "error": libnfs.nfs_get_error(ctx)}))
    sys.exit(1)


def connect(url: str) -> Any:
    ctx = libnfs.nfs_init_context()
    parsed = libnfs.nfs_parse_url_dir(ctx, url)
    if parsed is None:
        fail("parse url", -1, ctx)
    code = libnfs.nfs_mount(ctx, parsed.server, parsed.path)
    if code != 0:
        fail("mount", code, ctx)
    return ctx


def open_file(ctx: Any, path: str, flags: int) -> Any:
    ptr = libnfs.new_NFSFileHandle()
    code = libnfs.nfs_open(ctx, path, flags, ptr)
    if code != 0:
        fail(f"open {path}", code, ctx)
    return libnfs.NFSFileHandle_value(ptr)


def write(url: str, path: str, plan: list[list[Any]]) -> None:
    ctx = connect(url)
    synced = open_file(ctx, path, os.O_RDWR | os.O_SYNC)
    plain = open_file(ctx, path, os.O_RDWR)
    print(json.dumps({"open": True}), flush=True)
    for n, op in enumerate(plan):
        if not sys.stdin.readline():
            return  # no more go-aheads
        if op[0] == "fsync":
            code = libnfs.nfs_fsync(ctx, plain)
            if code != 0:
                fail(f"op {n}", code, ctx)
        else:
            data = bytearray(bytes.fromhex(op[2]))
            fh = synced if op[0] == "sync" else plain
            code = libnfs.nfs_pwrite(ctx, fh, op[1], len(data), data)
            if code != len(data):
                fail(f"op {n}", code, ctx)
        print(json.dumps({"done": n}), flush=True)


def read(url: str, path: str, slots: list[list[int]]) -> None:
    ctx = connect(url)
    fh = open_file(ctx, path, os.O_RDONLY)
    out: dict[str, str] = {}
    for offset, size in slots:
        buf = bytearray(size)
        code = libnfs.nfs_pread(ctx, fh, offset, size, buf)
        if code != size:
            fail(f"read at {offset}", code, ctx)
        out[str(offset)] = bytes(buf).hex()
    print(json.dumps({"slots": out}), flush=True)


if __name__ == "__main__":
    mode, url, path = sys.argv[1:4]
    if mode == "write":
        write(url, path, json.loads(Path(sys.argv[4]).read_text()))
    else:
        read(url, path, json.load(sys.stdin))
