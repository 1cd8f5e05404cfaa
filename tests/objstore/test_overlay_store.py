"""Overlay write-through to the shared state in the real store (Ceph RGW): a stable write is in
the store before it returns, an UNSTABLE one at COMMIT; a node with an empty results folder
rebuilds the overlay from the store, the newest epoch's copy of each block winning."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.catalog.objects import StoreOptions
from liverecovery.catalog.shared_state import DirectorySharedState, open_shared_state
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.datastore.overlay_store import (
    StoreBackedOverlay,
    overlay_blocks_key,
    restore_overlay,
)
from liverecovery.errors import BackendError, OverlayError
from liverecovery.nfs.filesystem import Stability
from liverecovery.testing.objstore import RadosGateway

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

BS = 64 * 1024
SIZE = 10 * BS + 1000  # a short last block


@pytest.fixture
def state_url(rgw: RadosGateway, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in rgw.environ().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return rgw.url(f"state-{uuid.uuid4().hex[:8]}")


def _base(overlay: StoreBackedOverlay | WriteOverlay, offset: int, n: int) -> dict[int, bytes]:
    return {o: bytes(length) for o, length in overlay.to_fill(offset, n)}


async def _node(tmp: Path, name: str, url: str, epoch: int) -> StoreBackedOverlay:
    local = await WriteOverlay.open(tmp / name, size=SIZE)
    state = open_shared_state(url, StoreOptions(retries=0))
    await restore_overlay(state, "job1", "scsi0_0", local)
    return StoreBackedOverlay(local, state, job_id="job1", disk="scsi0_0", epoch=epoch)


async def test_stable_write_is_in_the_store_before_it_returns(
    state_url: str, tmp_path: Path
) -> None:
    a = await _node(tmp_path, "a", state_url, epoch=1)
    data = os.urandom(5000)
    offset = 3 * BS - 100  # spans blocks 2 and 3
    assert await a.write(offset, data, Stability.FILE_SYNC, _base(a, offset, 5000)) == (
        Stability.FILE_SYNC
    )
    state = open_shared_state(state_url)
    prefix = overlay_blocks_key("job1", "scsi0_0")
    assert await state.keys(prefix) == [
        f"{prefix}/0000000001/000000000002",
        f"{prefix}/0000000001/000000000003",
    ]
    got = await state.get(f"{prefix}/0000000001/000000000002")
    assert got is not None and got.data[-100:] == data[:100]
    # UNSTABLE: not in the store until COMMIT
    await a.write(0, b"u" * 10, Stability.UNSTABLE, _base(a, 0, 10))
    assert len(await state.keys(prefix)) == 2
    await a.commit()
    assert len(await state.keys(prefix)) == 3
    # a rewrite of a block replaces its object; unchanged bytes are not sent again
    puts = a.puts
    await a.write(offset, data, Stability.DATA_SYNC)
    assert a.puts == puts
    await a.write(offset, data[::-1], Stability.FILE_SYNC)
    assert a.puts == puts + 2
    assert len(await state.keys(prefix)) == 3
    # the last, short block
    await a.write(SIZE - 10, b"e" * 10, Stability.FILE_SYNC, _base(a, SIZE - 10, 10))
    got = await state.get(f"{prefix}/0000000001/000000000010")
    assert got is not None and len(got.data) == 1000 and got.data.endswith(b"e" * 10)
    await a.aclose()


async def test_new_node_rebuilds_the_overlay_from_the_store(state_url: str, tmp_path: Path) -> None:
    """Node A acknowledges writes and dies (its folder is lost); node B, epoch 2, opens an
    empty overlay from the store and reads every acknowledged byte; B's own writes win over
    a late PUT of A's epoch when a third node restores."""
    a = await _node(tmp_path, "a", state_url, epoch=1)
    expected = bytearray(SIZE)
    for i in range(12):
        offset = (i * 37_123) % (SIZE - 9000)
        data = os.urandom(9000)
        await a.write(offset, data, Stability.FILE_SYNC, _base(a, offset, len(data)))
        expected[offset : offset + len(data)] = data
    await a.write(5 * BS, b"x" * 100, Stability.UNSTABLE, _base(a, 5 * BS, 100))
    expected[5 * BS : 5 * BS + 100] = b"x" * 100
    await a.commit()
    held = a.held(0, SIZE)
    # A dies: its local folder is gone, nothing closed
    b = await _node(tmp_path, "b", state_url, epoch=2)
    assert b.held(0, SIZE) == held
    for start, n in held:
        assert await b.read(start, n) == bytes(expected[start : start + n])
    await b.write(0, b"B" * 10, Stability.FILE_SYNC, _base(b, 0, 10))
    expected[0:10] = b"B" * 10
    # a fenced A's late PUT of block 0 in its own epoch 1 never hides B's
    await a.write(0, b"A" * 10, Stability.FILE_SYNC)
    c = await _node(tmp_path, "c", state_url, epoch=3)
    assert await c.read(0, 10) == b"B" * 10
    for start, n in c.held(0, SIZE):
        assert await c.read(start, n) == bytes(expected[start : start + n])
    for node in (a, b, c):
        await node.aclose()


async def test_store_down_the_write_is_not_acknowledged(tmp_path: Path) -> None:
    """A store that does not answer: the stable write raises (the client is told to retry),
    and the block is sent with the next COMMIT once the store is back."""
    local = await WriteOverlay.open(tmp_path / "o", size=SIZE)
    real = DirectorySharedState(tmp_path / "state")

    class Down:
        up = False

        async def get(self, key: str):  # type: ignore[no-untyped-def]
            return await real.get(key)

        async def create(self, key: str, data: bytes) -> str | None:
            if not self.up:
                raise BackendError("store away", operation="shared_state")
            return await real.create(key, data)

        async def replace(self, key: str, data: bytes, etag: str) -> str | None:
            return await real.replace(key, data, etag)

        async def keys(self, prefix: str) -> list[str]:
            return await real.keys(prefix)

        async def aclose(self) -> None:
            return None

    down = Down()
    o = StoreBackedOverlay(local, down, job_id="j", disk="d", epoch=1)
    with pytest.raises(BackendError):
        await o.write(0, b"z" * BS, Stability.FILE_SYNC)
    assert await real.keys("jobs/j/overlay/d") == []
    down.up = True
    await o.commit()
    assert await real.keys("jobs/j/overlay/d") == ["jobs/j/overlay/d/0000000001/000000000000"]
    await o.aclose()


async def test_restore_refuses_a_foreign_geometry(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    await state.create("jobs/j/overlay/d/0000000001/000000000000", b"short")
    local = await WriteOverlay.open(tmp_path / "o", size=SIZE)
    with pytest.raises(OverlayError, match="000000000000: 5 bytes"):
        await restore_overlay(state, "j", "d", local)
    await state.create("jobs/j/overlay/e/junk", b"x")
    with pytest.raises(OverlayError, match="jobs/j/overlay/e/junk"):
        await restore_overlay(state, "j", "e", local)
    await local.aclose()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.lists(
        st.tuples(
            st.integers(0, SIZE - 1),
            st.integers(1, 3 * BS),
            st.sampled_from(list(Stability)),
            st.integers(1, 3),  # the epoch (node) that writes it
        ),
        min_size=1,
        max_size=15,
    )
)
def test_restore_equals_every_committed_write(
    tmp_path_factory: pytest.TempPathFactory,
    writes: list[tuple[int, int, Stability, int]],
) -> None:
    """Nodes of growing epochs write in turn (each restoring first, as a takeover does); after
    the last COMMIT a new node restores exactly the bytes written (DirectorySharedState: the
    same contract as the store, fast enough for many examples)."""

    async def run() -> None:
        tmp = tmp_path_factory.mktemp("prop")
        state = DirectorySharedState(tmp / "state")
        expected = bytearray(SIZE)
        node: StoreBackedOverlay | None = None
        for offset, n, stability, epoch in sorted(writes, key=lambda w: w[3]):
            n = min(n, SIZE - offset)
            if node is None or node.epoch != epoch:
                if node is not None:
                    await node.aclose()
                local = await WriteOverlay.open(tmp / f"n{epoch}", size=SIZE)
                await restore_overlay(state, "j", "d", local)
                node = StoreBackedOverlay(local, state, job_id="j", disk="d", epoch=epoch)
            data = os.urandom(n)
            await node.write(offset, data, stability, _base(node, offset, n))
            expected[offset : offset + n] = data
        assert node is not None
        await node.aclose()
        last = await WriteOverlay.open(tmp / "last", size=SIZE)
        await restore_overlay(state, "j", "d", last)
        got = bytearray(SIZE)
        for start, n in last.held(0, SIZE):
            got[start : start + n] = await last.read(start, n)
        assert got == expected
        await last.aclose()

    anyio.run(run)
