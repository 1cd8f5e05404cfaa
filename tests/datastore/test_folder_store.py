"""The VM folder written through to the shared state (``datastore/folder_store.py``): what the
ESX host creates and writes is in the store before the reply, under the owner's epoch, and a
node with an empty folder rebuilds it with the same names, file ids, sizes and bytes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.catalog.shared_state import DirectorySharedState
from liverecovery.datastore.folder_store import (
    FOLDER_BLOCK,
    StoreBackedFolder,
    files_key,
)
from liverecovery.errors import NfsError, NfsStatus, OverlayError
from liverecovery.nfs.filesystem import CreateMode, SetAttributes, Stability

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

JOB = "job1"


async def _open(tmp: Path, state: DirectorySharedState, node: str, epoch: int) -> StoreBackedFolder:
    folder = tmp / node / "folder"
    folder.mkdir(parents=True, exist_ok=True)
    return await StoreBackedFolder.open(folder, state, job_id=JOB, epoch=epoch)


async def _listing(fs: StoreBackedFolder) -> dict[str, int]:
    page = await fs.readdir(fs.root_id, 0, 100)
    assert page.eof
    return {e.name: e.fileid for e in page.entries}


async def test_a_stable_write_is_in_the_store_before_it_returns(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    fs = await _open(tmp_path, state, "a", 1)
    try:
        fid = await fs.create(fs.root_id, "vmware.log", SetAttributes(mode=0o644))
        await fs.write(fid, 0, b"line one\n", Stability.FILE_SYNC)
        key = f"{files_key(JOB)}/{fid}/0/{1:010d}/{0:012d}"
        got = await state.get(key)
        assert got is not None and got.data == b"line one\n"
        await fs.write(fid, 9, b"line two\n", Stability.UNSTABLE)
        got = await state.get(key)
        assert got is not None and got.data == b"line one\n"  # not before COMMIT
        await fs.commit(fid)
        got = await state.get(key)
        assert got is not None and got.data == b"line one\nline two\n"
    finally:
        await fs.aclose()


async def test_a_new_node_rebuilds_names_ids_sizes_and_bytes(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    (tmp_path / "a" / "folder").mkdir(parents=True)
    (tmp_path / "a" / "folder" / "vm.vmx").write_bytes(b'displayName = "vm"\n')  # the builder's
    a = await _open(tmp_path, state, "a", 1)
    try:
        vmx = await a.lookup(a.root_id, "vm.vmx")
        await a.write(vmx, 0, b'displayName = "vm-changed"\n', Stability.FILE_SYNC)
        swap = await a.create(a.root_id, "vm.vswp", SetAttributes(size=1 << 30))  # sparse, 1 GiB
        await a.write(swap, 5 * FOLDER_BLOCK - 10, b"x" * 30, Stability.FILE_SYNC)
        log = await a.create(a.root_id, "vmware.log", SetAttributes(mode=0o644))
        await a.write(log, 0, os.urandom(3 * FOLDER_BLOCK + 7), Stability.FILE_SYNC)
        await a.rename(a.root_id, "vmware.log", a.root_id, "vmware-1.log")
        log2 = await a.create(a.root_id, "vmware.log", SetAttributes(mode=0o644))
        await a.write(log2, 0, b"new log\n", Stability.DATA_SYNC)
        lck = await a.create(a.root_id, ".lck-1", SetAttributes(), CreateMode.GUARDED)
        await a.write(lck, 0, b"lock".ljust(128), Stability.FILE_SYNC)
        gone = await a.create(a.root_id, ".lck-2", SetAttributes())
        await a.remove(a.root_id, ".lck-2")
        sub = await a.mkdir(a.root_id, "sub", SetAttributes())
        inner = await a.create(sub, "f", SetAttributes())
        await a.write(inner, 0, b"in a folder", Stability.FILE_SYNC)
        nvram = await a.create(a.root_id, "vm.nvram", SetAttributes())
        await a.write(nvram, 0, b"n" * 100_000, Stability.FILE_SYNC)
        await a.setattr(nvram, SetAttributes(size=10))  # shrinks: a new incarnation
        await a.setattr(nvram, SetAttributes(size=100_000))  # grows again: zeros after 10
        names_a = await _listing(a)
        contents_a = {n: (await a.read(f, 0, 2 << 20))[0] for n, f in names_a.items() if n != "sub"}
        sizes_a = {n: (await a.getattr(f)).size for n, f in names_a.items()}
        sub_a = (await a.read(inner, 0, 100))[0]
    finally:
        await a.aclose()

    b = await _open(tmp_path, state, "b", 2)  # an empty folder: everything from the store
    try:
        names_b = await _listing(b)
        assert names_b == names_a
        assert ".lck-2" not in names_b and gone not in names_b.values()
        assert {n: (await b.lookup(b.root_id, n)) for n in names_b} == names_a
        for name, fid in names_b.items():
            assert (await b.getattr(fid)).size == sizes_a[name], name
            if name != "sub":
                assert (await b.read(fid, 0, 2 << 20))[0] == contents_a[name], name
        assert contents_a["vm.nvram"] == b"n" * 10 + bytes(100_000 - 10)
        assert await b.lookup(names_b["sub"], "f") == inner
        assert (await b.read(inner, 0, 100))[0] == sub_a
        assert (await b.read(swap, 5 * FOLDER_BLOCK - 10, 30))[0] == b"x" * 30
        # the swap file's holes were never sent: the two blocks of data
        assert len(await state.keys(f"{files_key(JOB)}/{swap}/0/{2:010d}")) == 2
        # and B writes on under its own epoch, new ids after A's
        new = await b.create(b.root_id, "vm.vmsd", SetAttributes())
        assert new > max(names_a.values())
    finally:
        await b.aclose()


async def test_links_are_refused_and_unknown_ids_are_stale(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    fs = await _open(tmp_path, state, "a", 1)
    try:
        fid = await fs.create(fs.root_id, "f", SetAttributes())
        with pytest.raises(NfsError) as err:
            await fs.link(fid, fs.root_id, "g")
        assert err.value.status is NfsStatus.NOTSUPP
        with pytest.raises(NfsError) as err:
            await fs.symlink(fs.root_id, "s", "f", SetAttributes())
        assert err.value.status is NfsStatus.NOTSUPP
        with pytest.raises(NfsError) as err:
            await fs.getattr(fid + 100)
        assert err.value.status is NfsStatus.STALE
    finally:
        await fs.aclose()


async def test_an_index_that_is_not_one_is_named(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    await state.create(f"{files_key(JOB)}/index/{1:010d}", b"not json")
    await state.create(f"jobs/{JOB}/restored/files/{1:010d}", b"1\n")
    with pytest.raises(OverlayError, match=f"{files_key(JOB)}/index/0000000001"):
        await _open(tmp_path, state, "b", 2)


_NAMES = ["vm.vmx", "vm.nvram", "vmware.log", "vmware-1.log", ".lck-1", "vm.vswp"]
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(_NAMES), st.integers(0, 3 * FOLDER_BLOCK)),
        st.tuples(st.just("write"), st.sampled_from(_NAMES), st.integers(0, 3 * FOLDER_BLOCK)),
        st.tuples(st.just("unstable"), st.sampled_from(_NAMES), st.integers(0, 3 * FOLDER_BLOCK)),
        st.tuples(st.just("truncate"), st.sampled_from(_NAMES), st.integers(0, 3 * FOLDER_BLOCK)),
        st.tuples(st.just("remove"), st.sampled_from(_NAMES), st.just(0)),
        st.tuples(st.just("rename"), st.sampled_from(_NAMES), st.integers(0, len(_NAMES) - 1)),
    ),
    max_size=20,
)


async def _apply(tmp: Path, ops: list[tuple[str, str, int]]) -> None:
    state = DirectorySharedState(tmp / "state")
    a = await _open(tmp, state, "a", 1)
    try:
        for n, (op, name, arg) in enumerate(ops):
            with contextlib.suppress(NfsError):  # NOENT, EXIST: as ESXi would be told
                if op == "create":
                    await a.create(a.root_id, name, SetAttributes(size=arg or None))
                elif op in ("write", "unstable"):
                    fid = await a.lookup(a.root_id, name)
                    data = bytes([n % 251 + 1]) * 5000
                    stable = Stability.FILE_SYNC if op == "write" else Stability.UNSTABLE
                    await a.write(fid, arg, data, stable)
                    await a.commit(fid)  # acknowledged: UNSTABLE counts after COMMIT
                elif op == "truncate":
                    await a.setattr(await a.lookup(a.root_id, name), SetAttributes(size=arg))
                elif op == "remove":
                    await a.remove(a.root_id, name)
                else:
                    await a.rename(a.root_id, name, a.root_id, _NAMES[arg])
        names = await _listing(a)
        contents = {n: (await a.read(f, 0, 1 << 20))[0] for n, f in names.items()}
    finally:
        await a.aclose()
    b = await _open(tmp, state, "b", 2)
    try:
        assert await _listing(b) == names
        for name, fid in names.items():
            assert (await b.read(fid, 0, 1 << 20))[0] == contents[name], name
    finally:
        await b.aclose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_any_sequence_of_changes_is_rebuilt_by_the_next_node(
    ops: list[tuple[str, str, int]],
) -> None:
    """Creates, stable and committed writes, truncations, removes and renames on one node: a
    node with an empty folder serves the same names, ids and bytes from the store alone."""
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(_apply, Path(tmp), ops)
