"""Runs PyPI libnfs sessions in a child process.

libnfs's Python binding holds the GIL while it waits on the network, so it cannot share a
process with the server it talks to. Usage: ``python libnfs_peer.py SESSION URL``; prints JSON.
"""

from __future__ import annotations

import json
import sys

import libnfs

GiB = 1 << 30


def session(url: str) -> dict[str, object]:
    nfs = libnfs.NFS(url)
    f = nfs.open("/hello.txt", "wb+")
    f.write(bytearray(b"hello from libnfs"))
    f.close()
    out: dict[str, object] = {"read": nfs.open("/hello.txt", "rb").read().decode()}
    f = nfs.open("/hello.txt", "rb")
    f.seek(1000)
    out["past_eof"] = f.read(10).decode()
    f.close()
    nfs.mkdir("/d")
    out["list"] = sorted(nfs.listdir("/"))
    out["size"] = nfs.stat("/hello.txt")["size"]
    nfs.unlink("/hello.txt")
    nfs.rmdir("/d")
    out["after"] = sorted(nfs.listdir("/"))
    return out


def sparse_tail(url: str) -> dict[str, object]:
    nfs = libnfs.NFS(url)
    f = nfs.open("/sparse.img", "rb")
    f.seek(GiB)
    data = f.read(1 << 16)
    f.close()
    return {"hex": data.hex()}


def preads(url: str) -> dict[str, object]:
    """Reads the ``[path, offset, count]`` triples given as JSON on stdin; their bytes in hex."""
    nfs = libnfs.NFS(url)
    out = []
    for path, offset, count in json.loads(sys.stdin.read()):
        f = nfs.open(path, "rb")
        f.seek(offset)
        out.append(f.read(count).hex())
        f.close()
    return {"hex": out}


if __name__ == "__main__":
    fn = {"session": session, "sparse_tail": sparse_tail, "preads": preads}[sys.argv[1]]
    print(json.dumps(fn(sys.argv[2])))
