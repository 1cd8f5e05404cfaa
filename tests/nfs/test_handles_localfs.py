"""File handles (HMAC, persisted key) and the local-directory filesystem."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs.filesystem import CreateMode, FileType, SetAttributes, Stability
from liverecovery.nfs.handles import HandleCodec, load_or_create_key
from liverecovery.nfs.localfs import LocalFilesystem

KEY = b"k" * 32


def test_key_is_persisted_owner_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = load_or_create_key(state)
    assert load_or_create_key(state) == key
    assert stat.S_IMODE(os.stat(state / "handle-key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    other = load_or_create_key(tmp_path / "other")
    assert other != key


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_handles_round_trip(export_id: int, generation: int, fileid: int) -> None:
    codec = HandleCodec(KEY)
    h = codec.decode(codec.encode(export_id, generation, fileid))
    assert (h.export_id, h.generation, h.fileid) == (export_id, generation, fileid)


@given(st.integers(0, 35), st.integers(1, 255))
def test_mutated_handle_is_badhandle(pos: int, flip: int) -> None:
    codec = HandleCodec(KEY)
    fh = bytearray(codec.encode(1, 1, 12345))
    fh[pos] ^= flip
    with pytest.raises(NfsError) as exc:
        codec.decode(bytes(fh))
    assert exc.value.status == NfsStatus.BADHANDLE


def test_foreign_and_truncated_handles_are_badhandle() -> None:
    fh = HandleCodec(b"x" * 32).encode(1, 1, 7)
    for bad in (fh, fh[:-1], fh + b"\0", b""):
        with pytest.raises(NfsError) as exc:
            HandleCodec(KEY).decode(bad)
        assert exc.value.status == NfsStatus.BADHANDLE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_localfs_refuses_bad_names(tmp_path: Path) -> None:
    fs = LocalFilesystem(tmp_path)
    root = fs.root_id
    cases = {
        "a/b": NfsStatus.ACCES,
        "a\0b": NfsStatus.ACCES,
        "..": NfsStatus.INVAL,
        ".": NfsStatus.INVAL,
        "x" * 256: NfsStatus.NAMETOOLONG,
        "é" * 128: NfsStatus.NAMETOOLONG,  # 256 bytes in UTF-8
    }
    for name, status in cases.items():
        with pytest.raises(NfsError) as exc:
            await fs.create(root, name, SetAttributes())
        assert exc.value.status == status, name
    await fs.create(root, "x" * 255, SetAttributes())
    assert (tmp_path / ("x" * 255)).exists()
    assert await fs.lookup(root, "..") == root  # '..' never leaves the export
    assert sorted(os.listdir(tmp_path)) == ["x" * 255]


@pytest.mark.anyio
async def test_localfs_ids_are_inodes_and_survive_a_new_instance(tmp_path: Path) -> None:
    fs = LocalFilesystem(tmp_path)
    d = await fs.mkdir(fs.root_id, "d", SetAttributes())
    f = await fs.create(d, "f", SetAttributes())
    assert f == os.stat(tmp_path / "d" / "f").st_ino
    await fs.write(f, 0, b"data", Stability.FILE_SYNC)
    await fs.aclose()
    fresh = LocalFilesystem(tmp_path)  # a restart: nothing cached, the tree is searched
    assert await fresh.read(f, 0, 100) == (b"data", True)
    assert (await fresh.getattr(d)).type == FileType.DIR
    await fresh.remove(d, "f")
    with pytest.raises(NfsError) as exc:
        await fresh.getattr(f)
    assert exc.value.status == NfsStatus.STALE


@pytest.mark.anyio
async def test_localfs_exclusive_create_is_idempotent_per_verifier(tmp_path: Path) -> None:
    fs = LocalFilesystem(tmp_path)
    a = await fs.create(fs.root_id, "x", SetAttributes(), CreateMode.EXCLUSIVE, b"12345678")
    again = await fs.create(fs.root_id, "x", SetAttributes(), CreateMode.EXCLUSIVE, b"12345678")
    assert again == a
    with pytest.raises(NfsError) as exc:
        await fs.create(fs.root_id, "x", SetAttributes(), CreateMode.EXCLUSIVE, b"87654321")
    assert exc.value.status == NfsStatus.EXIST
    with pytest.raises(NfsError) as exc:
        await fs.create(fs.root_id, "x", SetAttributes(), CreateMode.GUARDED)
    assert exc.value.status == NfsStatus.EXIST


@pytest.mark.anyio
async def test_localfs_readdir_cookies_survive_changes(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i:03}").write_bytes(b"")
    fs = LocalFilesystem(tmp_path)
    first = await fs.readdir(fs.root_id, 0, 20)
    assert len(first.entries) == 20 and not first.eof
    seen = {e.name for e in first.entries}
    # Entries already returned vanish and new ones appear between pages: no duplicates.
    for e in first.entries[:10]:
        (tmp_path / e.name).unlink()
    rest = await fs.readdir(fs.root_id, first.entries[-1].cookie, 1000)
    assert rest.eof
    names = [e.name for e in rest.entries]
    assert not seen & set(names)
    assert len(seen) + len(names) == 50
    cookies = [e.cookie for e in (*first.entries, *rest.entries)]
    assert len(set(cookies)) == len(cookies) and 0 not in cookies
    again = await LocalFilesystem(tmp_path).readdir(fs.root_id, 0, 1000)
    assert {e.name: e.cookie for e in again.entries} == {e.name: e.cookie for e in rest.entries} | {
        e.name: e.cookie for e in first.entries[10:]
    }


@pytest.mark.anyio
async def test_localfs_read_past_eof_and_symlinks_not_followed(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    os.symlink("/etc/passwd", tmp_path / "link")
    fs = LocalFilesystem(tmp_path)
    f = await fs.lookup(fs.root_id, "f")
    assert await fs.read(f, 8, 100) == (b"89", True)
    assert await fs.read(f, 100, 10) == (b"", True)
    assert await fs.read(f, 0, 4) == (b"0123", False)
    link = await fs.lookup(fs.root_id, "link")
    assert (await fs.getattr(link)).type == FileType.LNK
    assert await fs.readlink(link) == "/etc/passwd"
    with pytest.raises(NfsError) as exc:
        await fs.read(link, 0, 10)
    assert exc.value.status == NfsStatus.INVAL
