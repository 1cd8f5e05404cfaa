"""The effects table: every effect can be undone and journaled, and a job resumed from a journal
holds the very compensations (names, order, vm_bound) the job that wrote it held."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from liverecovery import LiveRecovery, State
from liverecovery.job import effects
from liverecovery.job.effects import EFFECTS
from liverecovery.job.job import RecoveryJob
from liverecovery.job.migration import ManualMigration
from liverecovery.job.states import COMPENSATION_ORDER

from .helpers import STEP_CALL, STEP_COMPENSATION, World, fast_settings, reach, spec

pytestmark = pytest.mark.anyio

Stack = list[tuple[str, str, bool]]


def stack(job: RecoveryJob) -> Stack:
    """The job's compensations, oldest first: (effect, undo name, vm_bound)."""
    return [(c.effect, c.name, c.vm_bound) for c in job._compensations]


def test_every_effect_has_an_undo_and_a_journal_record() -> None:
    for row in EFFECTS:
        assert effects.has_undo(row), row
        assert row.kind and row.fields, row
        assert effects.effect(row.name) is row
    assert len({row.name for row in EFFECTS}) == len(EFFECTS)
    assert len({row.undo for row in EFFECTS}) == len(EFFECTS)


def test_the_table_is_in_step_order() -> None:
    assert tuple(row.undo for row in reversed(EFFECTS)) == COMPENSATION_ORDER
    assert [row.undo for row in EFFECTS] == list(STEP_COMPENSATION.values())
    assert {row.name for row in EFFECTS if row.vm_bound} == {"registered", "powered_on"}


def test_a_record_with_other_fields_than_the_table_is_refused() -> None:
    with pytest.raises(ValueError, match="exported"):
        effects.compensation("exported", {"host": "esx01"}, None, adopted=False)  # type: ignore[arg-type]


async def _crash(job: RecoveryJob) -> Stack:
    """The process dies (as in test_resume): its undo list and journal are dropped."""
    held = stack(job)
    job._compensations.clear()
    journal, job._journal = job._journal, None
    assert journal is not None
    await journal.aclose()
    job.request_exit()  # a running VM is left as it is; a job before power-on stops
    with anyio.fail_after(5):
        await job._done.wait()
    return held


@pytest.mark.parametrize("state", [*STEP_CALL][:-2])
async def test_a_rolled_back_resume_holds_what_the_crashed_job_held(
    tmp_path: Path, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    rolled_back: dict[str, Stack] = {}
    rollback = RecoveryJob._rollback

    async def spying(job: RecoveryJob) -> None:
        rolled_back[job.id] = stack(job)
        await rollback(job)

    monkeypatch.setattr(RecoveryJob, "_rollback", spying)
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    pause = world.faults.pause(STEP_CALL[state])
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(5):
            await pause.reached.wait()
        forward = await _crash(job)
    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with pytest.raises(Exception):  # noqa: B017 - interrupted before power-on
            await resumed.wait()
    assert rolled_back[resumed.id] == forward
    assert list(resumed.compensations_run) == [name for _, name, _ in reversed(forward)]
    assert world.clean(), world.leftovers()


@pytest.mark.parametrize("state", [State.SERVING, State.MIGRATING])
async def test_a_continued_resume_holds_what_the_crashed_job_held(
    tmp_path: Path, state: State
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    relocate = world.faults.pause("vsphere.relocate") if state is State.MIGRATING else None
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        await reach(job, State.SERVING)
        if relocate is not None:
            await job.migrate_now()
            with anyio.fail_after(5):
                await relocate.reached.wait()
        forward = await _crash(job)
    assert [vm_bound for _, _, vm_bound in forward] == [r.vm_bound for r in EFFECTS]
    again = world.faults.pause("vsphere.relocate")  # holds the resumed migration, stack intact
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr2:
        (resumed,) = await lr2.resume()
        if state is State.MIGRATING:
            with anyio.fail_after(5):
                await again.reached.wait()
        elif resumed.state is not state:
            await reach(resumed, state)
        assert resumed.state is state
        assert stack(resumed) == forward
        again.release()
        if state is State.SERVING:
            await resumed.migrate_now()
        with anyio.fail_after(10):
            summary = await resumed.wait()
    assert summary.state is State.COMPLETED
    assert world.clean(), world.leftovers()
