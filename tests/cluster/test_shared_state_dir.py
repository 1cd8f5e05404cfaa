"""The directory ``SharedState``: conditional writes, between processes too; the handle key
created once; the state kept apart from the backups."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import anyio
import pytest

from liverecovery.backends import SharedState
from liverecovery.catalog.shared_state import DirectorySharedState, open_shared_state
from liverecovery.cluster.node_state import (
    ExportsMirror,
    exports_key,
    install_node_state,
    shared_handle_key,
)
from liverecovery.errors import BackendError, SettingsError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_create_once_and_compare_and_swap(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "s")
    assert isinstance(state, SharedState)
    assert await state.get("leases/127.0.0.2") is None
    tag = await state.create("leases/127.0.0.2", b"one")
    assert tag is not None
    assert await state.create("leases/127.0.0.2", b"two") is None
    assert await state.replace("leases/127.0.0.2", b"two", "not-the-tag") is None
    new = await state.replace("leases/127.0.0.2", b"two", tag)
    assert new is not None and new != tag
    assert await state.replace("leases/127.0.0.2", b"three", tag) is None  # stale
    got = await state.get("leases/127.0.0.2")
    assert got is not None and (got.data, got.etag) == (b"two", new)
    assert await state.replace("absent", b"x", tag) is None
    with pytest.raises(ValueError, match="invalid shared-state key"):
        await state.get("../escape")


def _contend(root: str, etag: str, me: int, out: multiprocessing.Queue[tuple[int, bool]]) -> None:
    state = DirectorySharedState(root)
    won = state._write("lease", f"node {me}".encode(), etag) is not None
    out.put((me, won))


def test_one_of_many_processes_wins(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "s")
    tag = state._write("lease", b"stale", None)
    assert tag is not None
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[tuple[int, bool]] = ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(state.root), tag, i, out)) for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    winners = [me for me, won in results if won]
    assert len(winners) == 1
    found = state._read("lease")
    assert found is not None and found.data == f"node {winners[0]}".encode()


async def test_handle_key_is_created_once_and_shared(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "s")
    keys: list[bytes] = []

    async def node() -> None:
        keys.append(await shared_handle_key(state))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(node)
    assert len(keys) == 5 and len(set(keys)) == 1 and len(keys[0]) == 32


async def test_a_bad_stored_key_is_refused(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "s")
    await state.create("handle-key", b"short")
    with pytest.raises(BackendError, match="must be 32 bytes, found 5"):
        await shared_handle_key(state)


async def test_two_nodes_mint_the_same_handles(tmp_path: Path) -> None:
    from liverecovery.nfs.exports import ExportRegistry

    state = DirectorySharedState(tmp_path / "s")
    await install_node_state(state, "127.0.0.2", tmp_path / "a")
    reg_a = ExportRegistry(tmp_path / "a")
    await reg_a.export("/liverecovery/esx-0", ["127.0.0.1"])
    await reg_a.export("/liverecovery/esx-1", ["127.0.0.1"])
    mirror = ExportsMirror(state, "127.0.0.2", tmp_path / "a")
    assert await mirror.sync()
    assert not await mirror.sync()  # unchanged: nothing written
    assert await state.get(exports_key("127.0.0.2")) is not None

    def root(reg: ExportRegistry) -> bytes:
        exp = reg.get("/liverecovery/esx-1")
        assert exp is not None
        return reg.handle(exp, 1)

    # node B, its state from the store, exports only the second path: the same handle
    await install_node_state(state, "127.0.0.2", tmp_path / "b")
    reg_b = ExportRegistry(tmp_path / "b")
    await reg_b.export("/liverecovery/esx-1", ["127.0.0.1"])
    assert root(reg_b) == root(reg_a)
    # without the shared registry the export id differs; without the shared key, the MAC
    (tmp_path / "c").mkdir(mode=0o700)
    (tmp_path / "c" / "handle-key").write_bytes((tmp_path / "a" / "handle-key").read_bytes())
    reg_c = ExportRegistry(tmp_path / "c")
    await reg_c.export("/liverecovery/esx-1", ["127.0.0.1"])
    assert root(reg_c) != root(reg_a)
    reg_d = ExportRegistry(tmp_path / "d")
    for path in ("/liverecovery/esx-0", "/liverecovery/esx-1"):
        await reg_d.export(path, ["127.0.0.1"])
    assert root(reg_d) != root(reg_a)


def test_state_is_kept_apart_from_the_backups(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="overlaps the backups"):
        open_shared_state("s3://bk/backups/state", backups="s3://bk/backups")
    with pytest.raises(SettingsError, match="overlaps the backups"):
        open_shared_state(str(tmp_path), backups=str(tmp_path / "backups"))
    with pytest.raises(SettingsError, match="prefix of its own"):
        open_shared_state("s3://bk", backups="s3://ck/backups")
    with pytest.raises(SettingsError, match="not set"):
        open_shared_state("")
    assert isinstance(
        open_shared_state(str(tmp_path / "state"), backups=str(tmp_path / "bk")),
        DirectorySharedState,
    )


async def test_an_export_is_in_the_store_when_it_returns(tmp_path: Path) -> None:
    """The registry's hook copies each change before ``export`` returns: a node killed right
    after an export leaves it in the store (no polling interval in between)."""
    from liverecovery.nfs.exports import ExportRegistry

    state = DirectorySharedState(tmp_path / "s")
    await install_node_state(state, "127.0.0.2", tmp_path / "a")
    reg = ExportRegistry(tmp_path / "a")
    mirror = ExportsMirror(state, "127.0.0.2", tmp_path / "a")
    reg.on_change(mirror.changed)  # and no ``run``: nothing polls
    await reg.export("/liverecovery/esx-0", ["127.0.0.1"])
    got = await state.get(exports_key("127.0.0.2"))
    assert got is not None
    assert json.loads(got.data) == {"/liverecovery/esx-0": {"id": 1, "generation": 1}}
    await reg.unexport("/liverecovery/esx-0")
    got = await state.get(exports_key("127.0.0.2"))
    assert got is not None
    assert json.loads(got.data) == {"/liverecovery/esx-0": {"id": 1, "generation": 2}}
    assert got.data == (tmp_path / "a" / "exports.json").read_bytes()


async def test_an_export_the_store_does_not_take_fails(tmp_path: Path) -> None:
    from liverecovery.nfs.exports import ExportRegistry

    class Away(DirectorySharedState):
        async def create(self, key: str, data: bytes) -> str | None:
            raise BackendError("the store is away", operation="shared_state")

    state = Away(tmp_path / "s")
    reg = ExportRegistry(tmp_path / "a")
    mirror = ExportsMirror(state, "127.0.0.2", tmp_path / "a")
    reg.on_change(mirror.changed)
    with pytest.raises(BackendError, match="away"):
        await reg.export("/liverecovery/esx-0", ["127.0.0.1"])
    assert reg.get("/liverecovery/esx-0") is None  # not exported: no handle of it given out
