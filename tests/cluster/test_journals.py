"""Journals mirrored in the shared state: every complete record copied once, never
overwritten; restored in order up to the first gap; a torn tail is not copied."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.catalog.shared_state import DirectorySharedState
from liverecovery.cluster.journals import (
    JournalMirror,
    forget_job,
    journal_records_key,
    newest_records,
    parse_record_name,
    record_name,
    restore_journals,
)
from liverecovery.errors import BackendError
from liverecovery.job.journal import Journal, read_journal

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_journal_survives_its_node(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    local = tmp_path / "a" / "journal"
    local.mkdir(parents=True)
    journal = await Journal.open(local / "job1.journal")
    await journal.append("state", state="serving")
    await journal.append("effect", effect="powered_on", moref="vm-1")
    mirror = JournalMirror(state, "127.0.0.2", local)
    assert await mirror.sync() == 2
    assert await mirror.sync() == 0  # nothing new
    await journal.append("state", state="migrating")
    assert await mirror.sync() == 1
    await journal.aclose()
    with (local / "job1.journal").open("ab") as f:
        f.write(b"deadbeef {torn")  # a crash in the middle of a record: not copied
    assert await JournalMirror(state, "127.0.0.2", local).sync() == 0  # a restarted mirror

    other = tmp_path / "b" / "journal"
    assert await restore_journals(state, "127.0.0.2", other) == ["job1"]
    restored = read_journal(other / "job1.journal")
    original = read_journal(local / "job1.journal")
    assert restored.records == original.records and not restored.tail_error
    assert restored.last_state == "migrating"
    assert [r.data["effect"] for r in restored.effects()] == ["powered_on"]
    # restoring again changes nothing; another address has no journals
    assert await restore_journals(state, "127.0.0.2", other) == []
    assert await restore_journals(state, "127.0.0.3", tmp_path / "c") == []


async def test_restore_stops_at_a_gap(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    base = journal_records_key("127.0.0.2", "job2")
    for n in (0, 1, 3):
        await state.create(f"{base}/{n:010d}", f"record {n}\n".encode())
    assert await restore_journals(state, "127.0.0.2", tmp_path / "j") == ["job2"]
    assert (tmp_path / "j" / "job2.journal").read_bytes() == b"record 0\nrecord 1\n"


async def test_keys_lists_under_a_prefix(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    for key in ("journals/v/j/1", "journals/v/j/0", "leases/v", "journalsx/1"):
        await state.create(key, b"x")
    assert await state.keys("journals") == ["journals/v/j/0", "journals/v/j/1"]
    assert await state.keys("nothing") == []


async def _job_with_state(
    state: DirectorySharedState, local: Path, *records: tuple[str, str]
) -> None:
    local.mkdir(parents=True, exist_ok=True)
    journal = await Journal.open(local / "job3.journal")
    await journal.append("state", state="serving")
    await journal.append("effect", effect="powered_on", moref="vm-1")
    for kind, value in records:
        await journal.append(kind, state=value)
    await journal.aclose()
    for key in ("jobs/job3/overlay/scsi0_0/0000000001/000000000000", "jobs/job3/files/index/1"):
        await state.create(key, b"x")


@pytest.mark.parametrize(
    ("records", "forgotten"),
    [
        ((), False),  # serving: the VM runs from the backup
        ((("state", "migrating"),), False),  # the migration is not confirmed
        ((("state", "completed"),), False),  # no end record yet (cleanup not finished)
        ((("state", "completed"), ("end", "completed")), True),  # migrated and cleaned up
        ((("state", "cancelled"), ("end", "cancelled")), True),  # stopped by the operator
        ((("state", "failed"), ("end", "failed")), False),  # kept for the operator
    ],
)
async def test_a_job_that_ended_for_good_leaves_nothing_in_the_store(
    tmp_path: Path, records: tuple[tuple[str, str], ...], forgotten: bool
) -> None:
    state = DirectorySharedState(tmp_path / "state")
    local = tmp_path / "a" / "journal"
    await _job_with_state(state, local, *records)
    await JournalMirror(state, "127.0.0.2", local).sync()
    left = await state.keys("jobs/job3")
    journal_left = await state.keys(journal_records_key("127.0.0.2", "job3"))
    if forgotten:
        assert left == [] and journal_left == []
        assert await restore_journals(state, "127.0.0.2", tmp_path / "b") == []
    else:
        assert len(left) == 2 and len(journal_left) == 2 + len(records)


async def test_keep_ended_keeps_the_store_copy(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "state")
    local = tmp_path / "a" / "journal"
    await _job_with_state(state, local, ("state", "completed"), ("end", "completed"))
    await JournalMirror(state, "127.0.0.2", local, keep_ended=True).sync()
    assert len(await state.keys("jobs/job3")) == 2


async def test_a_half_forgotten_journal_is_not_resumed(tmp_path: Path) -> None:
    """Killed between deleting record 0 and the rest: a restorer finds no journal."""
    state = DirectorySharedState(tmp_path / "state")
    base = journal_records_key("127.0.0.2", "job4")
    for n in range(3):
        await state.create(f"{base}/{n:010d}", f"record {n}\n".encode())
    await state.delete([f"{base}/{0:010d}"])
    assert await restore_journals(state, "127.0.0.2", tmp_path / "j") == []


async def test_a_record_is_in_the_store_before_append_returns(tmp_path: Path) -> None:
    """Written through (the mirror as the journal's listener, no polling): a record that
    announces a side effect is in the shared state before the job acts on it."""
    state = DirectorySharedState(tmp_path / "state")
    journals = tmp_path / "journals"
    mirror = JournalMirror(state, "127.0.0.2", journals)
    journal = await Journal.open(journals / "job1.journal", mirror.appended)
    base = journal_records_key("127.0.0.2", "job1")
    for n, kind in enumerate(("spec", "exported", "registering")):
        await journal.append(kind, n=n)
        stored = await state.get(f"{base}/{n:010d}")
        assert stored is not None and kind.encode() in stored.data
    await journal.aclose()
    lines = (journals / "job1.journal").read_bytes().splitlines(keepends=True)
    assert [(await state.get(f"{base}/{n:010d}")).data for n in range(3)] == lines  # type: ignore[union-attr]


async def test_a_record_the_store_refuses_stops_the_job_before_its_effect(
    tmp_path: Path,
) -> None:
    class Refusing(DirectorySharedState):
        async def create(self, key: str, data: bytes) -> str | None:
            raise BackendError("the store is away", operation="shared_state")

    mirror = JournalMirror(Refusing(tmp_path / "state"), "127.0.0.2", tmp_path / "j")
    journal = await Journal.open(tmp_path / "j" / "job1.journal", mirror.appended)
    with pytest.raises(BackendError, match="the store is away"):
        await journal.append("registering", vmx_path="[ds] vm/vm.vmx")
    await journal.aclose()


async def test_a_closed_mirror_writes_nothing_more(tmp_path: Path) -> None:
    """Fenced: the new owner appends to these journals in the store now."""
    state = DirectorySharedState(tmp_path / "state")
    mirror = JournalMirror(state, "127.0.0.2", tmp_path / "j")
    journal = await Journal.open(tmp_path / "j" / "job1.journal", mirror.appended)
    await journal.append("spec")
    mirror.close()
    await journal.append("left_running")
    assert await mirror.sync() == 0
    await journal.aclose()
    assert await state.keys(journal_records_key("127.0.0.2", "job1")) == [
        f"{journal_records_key('127.0.0.2', 'job1')}/{0:010d}"
    ]


def test_the_newest_epoch_s_record_is_restored_at_each_index() -> None:
    names = [record_name(0, 1), record_name(1, 1), record_name(1, 2), record_name(2, 2)]
    assert newest_records(names) == [record_name(0, 1), record_name(1, 2), record_name(2, 2)]
    assert newest_records([record_name(0), record_name(2, 3)]) == [record_name(0)]  # a gap
    assert newest_records(["junk", "0000000000.x", record_name(0, 4)]) == [record_name(0, 4)]
    assert parse_record_name(record_name(7, 12)) == (7, 12)
    assert parse_record_name(record_name(7)) == (7, 0)


@settings(max_examples=200, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4)), max_size=30))
def test_restored_records_are_contiguous_and_newest(writes: list[tuple[int, int]]) -> None:
    names = [record_name(n, e) for n, e in writes]
    out = newest_records(names)
    parsed = [parse_record_name(name) for name in out]
    assert [p[0] for p in parsed if p] == list(range(len(out)))
    for n, epoch in (p for p in parsed if p):
        assert epoch == max(e for m, e in writes if m == n)


async def test_a_fenced_node_s_late_record_never_hides_the_new_owner_s(tmp_path: Path) -> None:
    """Node A (epoch 1) had record 2 in flight when it was fenced; node B (epoch 2) restored
    records 0-1 and appended its own record 2. The late PUT lands under epoch 1 and loses."""
    state = DirectorySharedState(tmp_path / "state")
    a = JournalMirror(state, "127.0.0.2", tmp_path / "a", epoch=1)
    journal = await Journal.open(tmp_path / "a" / "job1.journal", a.appended)
    await journal.append("spec")
    await journal.append("exported")
    await journal.aclose()
    assert await restore_journals(state, "127.0.0.2", tmp_path / "b") == ["job1"]
    b = JournalMirror(state, "127.0.0.2", tmp_path / "b", epoch=2)
    journal = await Journal.open(tmp_path / "b" / "job1.journal", b.appended)
    await journal.append("resumed")
    await journal.aclose()
    late = b'{"seq": 3, "kind": "late from A"}\n'
    assert await state.create(
        f"{journal_records_key('127.0.0.2', 'job1')}/{record_name(2, 1)}", late
    )
    assert await restore_journals(state, "127.0.0.2", tmp_path / "c") == ["job1"]
    restored = (tmp_path / "c" / "job1.journal").read_bytes()
    assert b"resumed" in restored and b"late from A" not in restored
    await forget_job(state, "127.0.0.2", "job1")
    assert await state.keys(journal_records_key("127.0.0.2", "job1")) == []
