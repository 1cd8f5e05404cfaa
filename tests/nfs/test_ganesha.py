"""Our client against NFS-Ganesha: the same operations the real clients run against our server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import CreateMode, FileType, SetAttributes, Stability

from .conftest import Ganesha

pytestmark = pytest.mark.anyio
GiB = 1 << 30


@pytest.fixture
async def gclient(ganesha: Ganesha) -> AsyncIterator[tuple[NfsClient, bytes, str]]:
    """A client, a fresh directory handle in Ganesha's export, and that directory's name."""
    async with await NfsClient.connect(
        "127.0.0.1", ganesha.nfs_port, mount_port=ganesha.mount_port, call_timeout=30
    ) as c:
        root = await c.mount(ganesha.path)
        name = f"t-{uuid.uuid4().hex[:8]}"
        d, _ = await c.mkdir(root, name)
        yield c, d, name


async def test_file_lifecycle_on_ganesha(
    ganesha: Ganesha, gclient: tuple[NfsClient, bytes, str]
) -> None:
    c, d, name = gclient
    fh, attrs = await c.create(d, "a.txt", SetAttributes(mode=0o644))
    assert attrs is not None and attrs.type == FileType.REG
    blob = os.urandom((1 << 20) + 777)
    res = await c.write(fh, 0, blob[: 1 << 20], Stability.UNSTABLE)
    await c.write(fh, 1 << 20, blob[1 << 20 :], Stability.UNSTABLE)
    assert await c.commit(fh) == res.verifier
    assert (ganesha.data / name / "a.txt").read_bytes() == blob
    assert await c.read(fh, 0, 1 << 20) == (blob[: 1 << 20], False)
    assert await c.read(fh, 1 << 20, 1 << 20) == (blob[1 << 20 :], True)
    assert await c.read(fh, 10 << 20, 100) == (b"", True)  # past EOF
    sub, _ = await c.mkdir(d, "sub")
    await c.rename(d, "a.txt", sub, "b.txt")
    names = {e.name for e in await c.readdir(sub)} - {".", ".."}
    assert names == {"b.txt"}
    plus = {e.name: e for e in await c.readdirplus(d)}
    assert plus["sub"].attributes is not None and plus["sub"].attributes.type == FileType.DIR
    await c.create(d, "x", mode=CreateMode.EXCLUSIVE, verifier=b"12345678")
    with pytest.raises(NfsError) as exc:
        await c.create(d, "x", mode=CreateMode.GUARDED)
    assert exc.value.status == NfsStatus.EXIST
    await c.remove(sub, "b.txt")
    await c.rmdir(d, "sub")
    await c.remove(d, "x")
    assert {e.name for e in await c.readdir(d)} - {".", ".."} == set()
    info = await c.fsinfo(d)
    assert info.rtmax >= 1 << 20
    assert (await c.fsstat(d)).tbytes > 0
    assert (await c.pathconf(d)).name_max >= 255


async def test_sparse_file_on_ganesha(
    ganesha: Ganesha, gclient: tuple[NfsClient, bytes, str]
) -> None:
    c, d, name = gclient
    fh, _ = await c.create(d, "sparse.img")
    await c.write(fh, GiB + 4096, b"tail marker", Stability.FILE_SYNC)
    assert (await c.getattr(fh)).size == GiB + 4096 + 11
    assert await c.read(fh, GiB, 1 << 16) == (b"\0" * 4096 + b"tail marker", True)
    assert (ganesha.data / name / "sparse.img").stat().st_blocks * 512 < 16 << 20


async def test_10000_entries_on_ganesha(
    ganesha: Ganesha, gclient: tuple[NfsClient, bytes, str]
) -> None:
    c, d, name = gclient
    expected = {f"e{i:05d}" for i in range(10_000)}
    for n in expected:
        (ganesha.data / name / n).touch()
    with anyio.fail_after(60):
        plain = [e.name for e in await c.readdir(d) if e.name not in (".", "..")]
        plus = [e.name for e in await c.readdirplus(d) if e.name not in (".", "..")]
    assert len(plain) == len(plus) == 10_000
    assert set(plain) == set(plus) == expected


async def test_refused_address_on_ganesha(ganesha: Ganesha) -> None:
    async with await NfsClient.connect(
        "127.0.0.1", ganesha.nfs_port, mount_port=ganesha.mount_port
    ) as c:
        with pytest.raises(NfsError) as exc:
            await c.mount(ganesha.restricted_path)
        assert exc.value.status == NfsStatus.ACCES
