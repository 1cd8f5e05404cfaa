"""The shared state in the real store (Ceph RGW): conditional PUTs as the leases and the
handle key need them, the store's errors named, nothing written under the backups."""

from __future__ import annotations

import uuid

import anyio
import pytest

from liverecovery.catalog.objects import S3Location, StoreOptions
from liverecovery.catalog.shared_state import ObjectSharedState, open_shared_state
from liverecovery.cluster.lease import LeaseHolder, LeaseWatcher
from liverecovery.cluster.node_state import shared_handle_key
from liverecovery.errors import BackendError
from liverecovery.testing.objstore import RadosGateway, object_digests

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def state_url(rgw: RadosGateway, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in rgw.environ().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return rgw.url(f"state-{uuid.uuid4().hex[:8]}")


async def test_conditional_writes_on_rgw(state_url: str) -> None:
    state = open_shared_state(state_url, StoreOptions(retries=0))
    assert isinstance(state, ObjectSharedState)
    assert await state.get("leases/127.0.0.2") is None
    tag = await state.create("leases/127.0.0.2", b"one")
    assert tag
    assert await state.create("leases/127.0.0.2", b"two") is None  # If-None-Match: *
    new = await state.replace("leases/127.0.0.2", b"two", tag)
    assert new and new != tag
    assert await state.replace("leases/127.0.0.2", b"three", tag) is None  # stale If-Match
    assert await state.replace("leases/absent", b"x", new) is None
    got = await state.get("leases/127.0.0.2")
    assert got is not None and (got.data, got.etag) == (b"two", new)
    quoted = await state.replace("leases/127.0.0.2", b"four", f'"{new}"')  # as S3 lists it
    assert quoted


async def test_delete_removes_keys_in_batches_and_ignores_missing_ones(state_url: str) -> None:
    state = open_shared_state(state_url, StoreOptions(retries=0))
    keys = [f"jobs/j1/overlay/d/0000000001/{n:012d}" for n in range(1100)]  # > one batch
    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(state.create, key, b"x")
    await state.create("jobs/j2/files/index/0000000001", b"{}")
    assert len(await state.keys("jobs/j1")) == 1100
    await state.delete([*await state.keys("jobs/j1"), "jobs/j1/never-there"])
    assert await state.keys("jobs/j1") == []
    assert await state.keys("jobs/j2") == ["jobs/j2/files/index/0000000001"]  # untouched
    await state.delete([])


async def test_every_node_reads_one_handle_key(state_url: str) -> None:
    nodes = [open_shared_state(state_url) for _ in range(4)]
    keys: list[bytes] = []

    async def one(state: ObjectSharedState | object) -> None:
        assert isinstance(state, ObjectSharedState)
        keys.append(await shared_handle_key(state))

    async with anyio.create_task_group() as tg:
        for state in nodes:
            tg.start_soon(one, state)
    assert len(set(keys)) == 1 and len(keys[0]) == 32


async def test_one_of_two_watchers_takes_an_expired_lease(state_url: str) -> None:
    state = open_shared_state(state_url)
    fences: list[str] = []

    async def fence() -> None:
        fences.append("a")

    a = LeaseHolder(state, "127.0.0.2", "a", lease_s=1.0, fence=fence)
    assert await a.acquire(None)
    with anyio.fail_after(20):
        stale = await LeaseWatcher(state, "127.0.0.2", lease_s=1.0, poll_s=0.1).wait_expired()
    assert stale is not None
    won = [
        await LeaseHolder(
            open_shared_state(state_url), "127.0.0.2", n, lease_s=1.0, fence=fence
        ).acquire(stale)
        for n in ("b", "c")
    ]
    assert won == [True, False]


async def test_a_bucket_that_does_not_exist_is_named(rgw: RadosGateway, state_url: str) -> None:
    state = ObjectSharedState(S3Location("no-such-bucket-x", "state"), StoreOptions(retries=0))
    with pytest.raises(BackendError, match="s3://no-such-bucket-x/state/handle-key"):
        await shared_handle_key(state)


async def test_the_backups_are_not_touched(rgw: RadosGateway, forms_url: str) -> None:
    before = object_digests(rgw.store(), "forms-root")
    with pytest.raises(Exception, match="overlaps the backups"):
        open_shared_state(forms_url + "/state", backups=forms_url)
    assert object_digests(rgw.store(), "forms-root") == before


async def test_keys_on_rgw(state_url: str) -> None:
    state = open_shared_state(state_url)
    for key in ("journals/v/j/0000000001", "journals/v/j/0000000000", "leases/v"):
        assert await state.create(key, b"x")
    assert await state.keys("journals") == ["journals/v/j/0000000000", "journals/v/j/0000000001"]
    assert await state.keys("nothing") == []
