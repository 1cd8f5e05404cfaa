"""Every preflight rule refuses with its own error whose message names the reason and numbers."""

from __future__ import annotations

import logging

import anyio
import pytest

from liverecovery import LiveRecovery, Passkey, PreflightError, RecoverySpec, State
from liverecovery.backends import MediaKind
from liverecovery.config import GiB
from liverecovery.errors import (
    ArchivedVmError,
    CacheSpaceError,
    ConcurrentSessionError,
    MultipleVmsError,
    PasskeyError,
    TapeBackupError,
)
from liverecovery.job.migration import ManualMigration

from .helpers import World, fast_settings, spec

pytestmark = pytest.mark.anyio


async def _refused(world: World, job_spec: RecoverySpec, **settings: object) -> PreflightError:
    async with LiveRecovery(fast_settings(**settings), world.backends) as lr:
        job = await lr.start(job_spec)
        with pytest.raises(PreflightError) as caught:
            await job.wait()
    assert job.state is State.FAILED
    assert world.clean(), world.leftovers()
    assert "exporter.export" not in world.faults.calls
    return caught.value


async def test_tape_backup_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01", media=MediaKind.TAPE, point_id="p7")
    err = await _refused(world, spec())
    assert isinstance(err, TapeBackupError)
    assert "tape" in str(err) and "'p7'" in str(err) and "'web01'" in str(err)


async def test_archived_vm_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01", archived=True)
    err = await _refused(world, spec())
    assert isinstance(err, ArchivedVmError) and "archived" in str(err)


async def test_several_vms_in_one_job_are_refused() -> None:
    world = World()
    world.catalog.add_vm("web01")
    err = await _refused(world, spec(vm=["web01", "db01", "app01"]))
    assert isinstance(err, MultipleVmsError)
    assert "names 3" in str(err) and "db01" in str(err)


@pytest.mark.parametrize(("given", "reason"), [(None, "gave none"), ("wrong-key", "wrong")])
async def test_missing_or_wrong_passkey_is_refused(
    given: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world = World()
    world.catalog.add_vm("web01")
    secret = "correct horse battery staple"
    job_spec = spec(passkey=given)
    err = await _refused(world, job_spec, restore_passkey=Passkey.from_secret(secret))
    assert isinstance(err, PasskeyError) and reason in str(err)
    for text in (str(err), repr(err), repr(job_spec), caplog.text):
        assert secret not in text
        if given:
            assert given not in text


async def test_right_passkey_is_accepted() -> None:
    world = World()
    world.catalog.add_vm("web01", passkey_required=True)
    key = Passkey.from_secret("s3cret")
    async with LiveRecovery(fast_settings(restore_passkey=key), world.backends) as lr:
        summary = await (await lr.start(spec(passkey="s3cret"))).wait()
    assert summary.state is State.COMPLETED


async def test_point_requiring_a_passkey_without_one_configured_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01", passkey_required=True)
    err = await _refused(world, spec(passkey="anything"))
    assert isinstance(err, PasskeyError) and "none is configured" in str(err)


def test_passkey_hash_round_trips_and_hides_itself() -> None:
    key = Passkey.from_secret("hunter2")
    again = Passkey.from_string(key.encode())
    assert again.matches("hunter2") and not again.matches("hunter3") and not again.matches(None)
    assert "hunter2" not in repr(key) and key.digest.hex() not in repr(key)
    assert key.encode().startswith("scrypt$16384$8$1$")


async def test_cache_space_below_floor_names_the_numbers() -> None:
    # 100 GiB cache, 5 % kept free, 90 GiB used elsewhere: 10 GiB free, 5 GiB usable < 20 GiB.
    world = World(cache_capacity=100 * GiB)
    world.cache.other_used = 90 * GiB
    world.catalog.add_vm("web01", disk_sizes=(40 * GiB,))
    err = await _refused(world, spec())
    assert isinstance(err, CacheSpaceError)
    msg = str(err)
    assert "10.00 GiB free of 100.00 GiB" in msg
    assert "needs 20.00 GiB" in msg and "5.00 GiB kept free (5 %)" in msg


async def test_cache_space_uses_fifteen_percent_of_a_large_vm() -> None:
    world = World(cache_capacity=400 * GiB)
    world.cache.other_used = 200 * GiB
    world.catalog.add_vm("big", disk_sizes=(1000 * GiB, 400 * GiB))
    err = await _refused(world, spec(vm="big"))
    # 15 % of 1400 GiB = 210 GiB > 20 GiB floor; 200 - 20 kept = 180 available.
    assert "needs 210.00 GiB" in str(err) and "1400.00 GiB" in str(err)


async def test_cache_space_counts_other_jobs_reservations() -> None:
    # 60 GiB, 3 GiB kept free, two jobs hold 20 GiB each: 17 GiB left < 20 GiB.
    world = World(cache_capacity=60 * GiB)
    world.catalog.add_vm("a")
    world.catalog.add_vm("b")
    world.catalog.add_vm("c")
    settings = fast_settings()
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        ja = await lr.start(spec(vm="a"))
        jb = await lr.start(spec(vm="b"))
        with anyio.fail_after(5):
            while len(world.cache.reservations()) < 2:
                await anyio.sleep(0.001)
        jc = await lr.start(spec(vm="c"))
        with anyio.fail_after(5), pytest.raises(CacheSpaceError, match=r"40\.00 GiB reserved by"):
            await jc.wait()
        await ja.stop(power_off=True)
        await jb.stop(power_off=True)
    assert world.clean()


async def test_thresholds_are_settings() -> None:
    world = World(cache_capacity=100 * GiB)
    world.cache.other_used = 90 * GiB
    world.catalog.add_vm("web01", disk_sizes=(10 * GiB,))
    async with LiveRecovery(
        fast_settings(job_space_floor_bytes=1 * GiB, cache_min_free_percent=1.0), world.backends
    ) as lr:
        summary = await (await lr.start(spec())).wait()
    assert summary.state is State.COMPLETED


async def test_live_browse_blocks_live_recovery_and_the_reverse() -> None:
    world = World()
    world.catalog.add_vm("web01")
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        async with lr.browse_session("web01", owner="browse-1"):
            job = await lr.start(spec())
            with pytest.raises(ConcurrentSessionError, match="live browse of it is running"):
                await job.wait()
        job2 = await lr.start(spec())
        for _ in range(50):
            if job2.state is State.SERVING:
                break
            await anyio.sleep(0.01)
        with pytest.raises(ConcurrentSessionError, match="live recovery of it is running"):
            async with lr.browse_session("web01", owner="browse-2"):
                pass
        # A second live recovery of the same VM is refused too.
        job3 = await lr.start(spec())
        with pytest.raises(ConcurrentSessionError):
            await job3.wait()
        await job2.stop(power_off=True)
        async with lr.browse_session("web01", owner="browse-3"):
            pass
    assert world.clean()
