"""The job journal: what it records, and how it survives torn and corrupt tails."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery import LiveRecovery, Passkey, State
from liverecovery.job.journal import (
    Journal,
    _encode,
    journal_dir,
    read_journal,
    unfinished_journals,
)

from .helpers import World, expected_rollback, fast_settings, spec

pytestmark = pytest.mark.anyio


async def _sample_journal(path: Path, n: int = 5) -> bytes:
    journal = await Journal.open(path)
    for i in range(n):
        await journal.append("state", state=f"s{i}")
    await journal.aclose()
    return path.read_bytes()


async def test_records_round_trip_and_reopen_appends(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    await _sample_journal(path, 3)
    journal = await Journal.open(path)
    await journal.append("end", state="completed")
    await journal.aclose()
    contents = read_journal(path)
    assert [r.seq for r in contents.records] == [1, 2, 3, 4]
    assert contents.finished and not contents.tail_error
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_torn_tail_is_detected_and_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    raw = await _sample_journal(path, 4)
    path.write_bytes(raw[:-7])  # a crash in the middle of the last write
    contents = read_journal(path)
    assert len(contents.records) == 3 and "record 4" in contents.tail_error
    assert "torn" in contents.tail_error
    journal = await Journal.open(path)
    await journal.append("state", state="after")
    await journal.aclose()
    again = read_journal(path)
    assert [r.data["state"] for r in again.records] == ["s0", "s1", "s2", "after"]
    assert not again.tail_error


async def test_flipped_bit_is_a_checksum_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    raw = bytearray(await _sample_journal(path, 3))
    second = raw.index(b"\n") + 20
    raw[second] ^= 0x04
    path.write_bytes(bytes(raw))
    contents = read_journal(path)
    assert len(contents.records) == 1
    assert "record 2" in contents.tail_error and str(path) in contents.tail_error


FIXED = b"".join(
    _encode({"seq": i + 1, "kind": "state", "data": {"state": f"s{i}"}, "at": 1.5})
    for i in range(6)
)


@settings(max_examples=200)
@given(
    cut=st.integers(0, len(FIXED)),
    flips=st.lists(st.tuples(st.integers(0, len(FIXED) - 1), st.integers(1, 255)), max_size=3),
)
def test_any_corruption_yields_an_intact_prefix_never_an_error(
    tmp_path_factory: pytest.TempPathFactory, cut: int, flips: list[tuple[int, int]]
) -> None:
    path = tmp_path_factory.mktemp("j") / "j.journal"
    path.write_bytes(FIXED)
    good = read_journal(path).records
    assert len(good) == 6
    raw = bytearray(FIXED)
    for pos, mask in flips:
        raw[pos] ^= mask
    path.write_bytes(bytes(raw[:cut]))
    contents = read_journal(path)
    assert contents.records == good[: len(contents.records)]
    assert contents.intact_bytes <= cut
    if cut == len(FIXED) and not flips:
        assert not contents.tail_error


async def test_a_job_journals_every_transition_effect_and_undo(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01", passkey_required=True)
    world.faults.fail("vsphere.power_on")
    secret = "never-in-the-journal"
    settings_ = fast_settings(job_results_dir=tmp_path, restore_passkey=Passkey.from_secret(secret))
    async with LiveRecovery(settings_, world.backends) as lr:
        job = await lr.start(spec(passkey=secret))
        with pytest.raises(Exception, match="power_on"):
            await job.wait()
    path = journal_dir(tmp_path) / f"{job.id}.journal"
    assert secret.encode() not in path.read_bytes()
    contents = read_journal(path)
    kinds = [r.kind for r in contents.records]
    assert kinds[0] == "job" and kinds[-1] == "end" and contents.finished
    assert contents.records[0].data["spec"]["has_passkey"] is True
    states = [r.data["state"] for r in contents.records if r.kind == "state"]
    assert states == [s.value for s in job.states_visited[1:]]
    effects = [r.data["effect"] for r in contents.records if r.kind == "effect"]
    assert effects == ["cache_reserved", "exported", "mounted", "published", "registered"]
    undone = [r.data["name"] for r in contents.records if r.kind == "undone"]
    assert undone == expected_rollback(State.POWERING_ON)
    assert contents.effects() == [] and unfinished_journals(tmp_path) == []


async def test_unfinished_journals_are_found(tmp_path: Path) -> None:
    d = journal_dir(tmp_path)
    journal = await Journal.open(d / "abc.journal")
    await journal.append("job", job_id="abc", spec={})
    await journal.append("state", state="serving")
    await journal.append("effect", effect="exported", path="/x")
    await journal.aclose()
    (found,) = unfinished_journals(tmp_path)
    assert found.job_id == "abc" and found.last_state == "serving"
    assert [r.data["effect"] for r in found.effects()] == ["exported"]


async def test_unwritable_journal_refuses_to_start_the_job(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01")
    (tmp_path / "journal").write_text("a file where the journal folder should be")
    async with LiveRecovery(fast_settings(job_results_dir=tmp_path), world.backends) as lr:
        job = await lr.start(spec())
        with pytest.raises(Exception, match="cannot write the job journal"):
            await job.wait()
    assert job.state is State.FAILED and world.faults.calls == [] and world.clean()
