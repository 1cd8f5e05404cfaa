"""Our server against real NFSv3 clients: libnfs-utils (nfs-ls, nfs-cat, nfs-cp), PyPI libnfs
and PyPI nfs-rs. The clients are synchronous, so they run in worker threads while the server
runs in the test's event loop."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import nfs_rs
import pytest

from liverecovery.nfs.localfs import LocalFilesystem

from .conftest import Served, run_tool

pytestmark = pytest.mark.anyio

GiB = 1 << 30


def rs_client(served: Served) -> nfs_rs.Client:
    port = served.server.port
    return nfs_rs.Client.connect(
        f"nfs://127.0.0.1{served.path}",
        versions=["3"],
        nfs_port=port,
        mount_port=port,
        noresvport=True,
        operation_timeout=30,
    )


def path_url(served: Served, path: str) -> str:
    port = served.server.port
    return f"nfs://127.0.0.1{served.path}{path}?version=3&nfsport={port}&mountport={port}"


async def test_libnfs_utils_round_trip(served: Served, tmp_path: Path) -> None:
    blob = os.urandom(3 * (1 << 20) + 12345)  # several full-size READs/WRITEs and a tail
    src = tmp_path / "src.bin"
    src.write_bytes(blob)
    await anyio.to_thread.run_sync(run_tool, "nfs-cp", str(src), path_url(served, "/up.bin"))
    assert (served.data / "up.bin").read_bytes() == blob
    out = await anyio.to_thread.run_sync(run_tool, "nfs-cat", path_url(served, "/up.bin"))
    assert out == blob
    back = tmp_path / "back.bin"
    await anyio.to_thread.run_sync(run_tool, "nfs-cp", path_url(served, "/up.bin"), str(back))
    assert back.read_bytes() == blob
    (served.data / "sub").mkdir()
    listing = await anyio.to_thread.run_sync(run_tool, "nfs-ls", served.url)
    names = sorted(line.split()[-1] for line in listing.decode().splitlines())
    assert names == ["sub", "up.bin"]
    assert f"{len(blob)} up.bin" in " ".join(listing.decode().split())


async def test_libnfs_utils_lists_10000_entries_exactly_once(served: Served) -> None:
    big = served.data / "many"
    big.mkdir()
    expected = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(10_000)}
    for name in expected:
        (big / name).touch()
    out = await anyio.to_thread.run_sync(run_tool, "nfs-ls", path_url(served, "/many"))
    names = [line.split()[-1] for line in out.decode().splitlines()]
    assert len(names) == 10_000
    assert set(names) == expected


async def test_libnfs_utils_refused_address(served: Served) -> None:
    (served.data / "secret").write_bytes(b"s")
    await served.server.set_clients(served.path, ["192.0.2.1"])  # not 127.0.0.1
    with pytest.raises(AssertionError, match="exited"):
        await anyio.to_thread.run_sync(run_tool, "nfs-ls", served.url)
    with pytest.raises(AssertionError, match="exited"):
        await anyio.to_thread.run_sync(run_tool, "nfs-cat", path_url(served, "/secret"))


async def libnfs_peer(session: str, url: str) -> dict[str, Any]:
    """Run a PyPI libnfs session in a child process (its binding holds the GIL while blocked)."""
    with anyio.fail_after(120):
        res = await anyio.run_process(
            [sys.executable, str(Path(__file__).with_name("libnfs_peer.py")), session, url],
            check=False,
        )
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    out: dict[str, Any] = json.loads(res.stdout)
    return out


async def test_pypi_libnfs(served: Served) -> None:
    out = await libnfs_peer("session", served.url)
    assert out["read"] == "hello from libnfs"
    assert out["past_eof"] == ""
    assert out["size"] == len(b"hello from libnfs")
    assert out["list"] == ["d", "hello.txt"]
    assert out["after"] == []
    assert os.listdir(served.data) == []


def _rs_session(served: Served) -> dict[str, object]:
    out: dict[str, object] = {}
    with rs_client(served) as c:
        with c.open("/a.bin", "wb") as f:
            f.write(b"nfs-rs was here")
        with c.open("/a.bin", "rb") as f:
            out["read"] = f.read()
            out["past_eof"] = f.read_at(10_000, 100)
        c.mkdir("/dir")
        c.rename("/a.bin", "/dir/b.bin")
        out["list"] = sorted(c.listdir("/dir"))
        out["stat_size"] = c.stat("/dir/b.bin").size
        c.remove("/dir/b.bin")
        c.rmdir("/dir")
        out["after"] = c.listdir("/")
        out["fsinfo"] = c.fs_info()
    return out


async def test_pypi_nfs_rs(served: Served) -> None:
    out = await anyio.to_thread.run_sync(_rs_session, served)
    assert out["read"] == b"nfs-rs was here"
    assert out["past_eof"] == b""
    assert out["list"] == ["b.bin"]
    assert out["stat_size"] == len(b"nfs-rs was here")
    assert out["after"] == []
    info = out["fsinfo"]
    assert info.max_read == info.max_write == 1 << 20  # type: ignore[attr-defined]


def _rs_sparse(served: Served) -> tuple[int, bytes, bytes, bytes]:
    with rs_client(served) as c:
        with c.open("/sparse.img", "wb") as f:
            f.write_at(b"tail marker", GiB + 4096)
            f.write_at(b"head", 0)
        with c.open("/sparse.img", "rb") as f:
            tail = f.read_at(GiB + 4096, 100)
            middle = f.read_at(GiB // 2, 65536)
            head = f.read_at(0, 4)
        return c.stat("/sparse.img").size, tail, middle, head


async def test_large_sparse_file(served: Served) -> None:
    size, tail, middle, head = await anyio.to_thread.run_sync(_rs_sparse, served)
    assert size == GiB + 4096 + len(b"tail marker")
    assert tail == b"tail marker" and head == b"head"
    assert middle == b"\0" * 65536
    st = (served.data / "sparse.img").stat()
    assert st.st_size == size and st.st_blocks * 512 < 16 * (1 << 20)  # still sparse
    # A second client (libnfs) reads across the 1 GiB boundary.
    out = await libnfs_peer("sparse_tail", served.url)
    assert bytes.fromhex(out["hex"]) == b"\0" * 4096 + b"tail marker"


def _rs_listing(served: Served) -> list[str]:
    with rs_client(served) as c:
        return [e.name for e in c.scandir("/many")]


async def test_nfs_rs_lists_10000_entries_exactly_once(served: Served) -> None:
    big = served.data / "many"
    big.mkdir()
    expected = {f"n{i}" for i in range(10_000)}
    for name in expected:
        (big / name).touch()
    names = await anyio.to_thread.run_sync(_rs_listing, served)
    names = [n for n in names if n not in (".", "..")]
    assert len(names) == 10_000 and set(names) == expected


def _rs_refused(served: Served) -> str:
    try:
        with rs_client(served) as c:
            c.listdir("/")
    except nfs_rs.NfsError as exc:
        return type(exc).__name__ + ": " + str(exc)
    return "no error"


async def test_nfs_rs_refused_address(served: Served, tmp_path: Path) -> None:
    # Another export keeps 127.0.0.1 connected, so the refusal is MNT's (ACCES).
    (tmp_path / "other").mkdir()
    await served.server.export_filesystem(
        "/other", LocalFilesystem(tmp_path / "other"), ["127.0.0.1"]
    )
    await served.server.set_clients(served.path, ["192.0.2.1"])
    outcome = await anyio.to_thread.run_sync(_rs_refused, served)
    assert outcome != "no error"
    assert "ermission" in outcome or "ACCES" in outcome.upper() or "Mount" in outcome


async def test_nfs_rs_address_no_export_allows(served: Served) -> None:
    """Closed at accept: the client fails cleanly, with an error and no answer."""
    await served.server.set_clients(served.path, ["192.0.2.1"])
    outcome = await anyio.to_thread.run_sync(_rs_refused, served)
    assert outcome != "no error"
    assert served.server.connections.refused >= 1
