"""The session lock files: names, permissions, conversions, and the rule itself as a property.

The property: owners spread over several registries sharing one lock directory (separate
descriptions of the lock files in this process, or separate real processes) are granted and
refused exactly what one in-memory registry holding all of them would grant and refuse.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from liverecovery.errors import BackendError, ConcurrentSessionError
from liverecovery.job.session_files import SessionFiles, lock_key
from liverecovery.job.sessions import SessionKind, SessionRegistry

from .session_procs import Worker

pytestmark = pytest.mark.timeout(60)

RECOVERY, BROWSE = SessionKind.RECOVERY, SessionKind.BROWSE


def test_flock_locks_belong_to_open_file_descriptions(tmp_path: Path) -> None:
    """The assumption that lets registries in one process stand for separate processes."""
    path = tmp_path / "vm.lock"
    path.touch()
    fd1, fd2 = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    dup = os.dup(fd1)
    try:
        fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB)  # same process, other description
        fcntl.flock(dup, fcntl.LOCK_EX | fcntl.LOCK_NB)  # same description: the same holder
        os.close(fd1)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the dup still holds it
        os.close(dup)
        fcntl.flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd2)


def test_two_registries_in_one_process_exclude_like_two_processes(tmp_path: Path) -> None:
    one, two = SessionRegistry(lock_dir=tmp_path), SessionRegistry(lock_dir=tmp_path)
    other = Worker()
    try:
        one.acquire("web01", RECOVERY, "job-1")
        with pytest.raises(ConcurrentSessionError, match=f"job-1, pid {os.getpid()}") as info:
            two.acquire("web01", BROWSE, "browse-1")
        assert info.value.vm == "web01"
        assert not other.acquire(tmp_path, "web01", "BROWSE", "browse-2")["ok"]
        one.release("web01", "job-1")
        two.acquire("web01", BROWSE, "browse-1")
        assert other.acquire(tmp_path, "web01", "BROWSE", "browse-2")["ok"]
        assert not other.acquire(tmp_path, "web01", "RECOVERY", "job-3")["ok"]
    finally:
        other.close()
        two.release_all()


def test_same_owner_again_is_a_no_op(tmp_path: Path) -> None:
    registry = SessionRegistry(lock_dir=tmp_path)
    registry.acquire("web01", RECOVERY, "job-1")
    registry.acquire("web01", RECOVERY, "job-1")
    assert registry.sessions("web01") == {"job-1": RECOVERY}
    assert [(h.owner, h.kind) for h in registry.holders("web01")] == [("job-1", RECOVERY)]
    registry.release("web01", "job-1")
    registry.release("web01", "job-1")  # closing what is not open: a no-op
    assert registry.sessions("web01") == {} and registry.holders("web01") == []
    assert list(tmp_path.glob("*.holder")) == []


def test_an_owner_changes_kind_only_when_the_rule_allows(tmp_path: Path) -> None:
    a, b, c = (SessionRegistry(lock_dir=tmp_path) for _ in range(3))
    try:
        a.acquire("web01", BROWSE, "a")
        b.acquire("web01", BROWSE, "b")
        with pytest.raises(ConcurrentSessionError, match=r"live browse of it is running \(b, pid"):
            a.acquire("web01", RECOVERY, "a")
        assert a.sessions("web01") == {"a": BROWSE}
        b.release("web01", "b")
        # a kept its browse through the refused upgrade: a recovery elsewhere is still refused.
        with pytest.raises(ConcurrentSessionError, match=r"\(a, pid"):
            c.acquire("web01", RECOVERY, "c")
        a.acquire("web01", RECOVERY, "a")
        assert [(h.owner, h.kind) for h in c.holders("web01")] == [("a", RECOVERY)]
        with pytest.raises(ConcurrentSessionError, match="live recovery of it is running"):
            c.acquire("web01", BROWSE, "c")
        a.acquire("web01", BROWSE, "a")  # and back down
        c.acquire("web01", BROWSE, "c")
        with pytest.raises(ConcurrentSessionError):
            c.acquire("web01", RECOVERY, "c")
        assert c.sessions("web01") == {"c": BROWSE}
    finally:
        for registry in (a, b, c):
            registry.release_all()


def test_the_lock_directory_is_made_owner_only(tmp_path: Path) -> None:
    lock_dir = tmp_path / "sessions"
    lock_dir.mkdir(mode=0o755)
    os.chmod(lock_dir, 0o755)
    registry = SessionRegistry(lock_dir=lock_dir)
    registry.acquire("web01", BROWSE, "b")
    assert lock_dir.stat().st_mode & 0o777 == 0o700
    registry.release_all()


def test_an_unusable_lock_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "sessions"
    blocker.write_text("not a directory")
    registry = SessionRegistry(lock_dir=blocker)
    with pytest.raises(BackendError, match=re.escape(str(blocker))) as info:
        registry.acquire("web01", RECOVERY, "job-1")
    assert info.value.operation == "session lock"
    assert registry.sessions("web01") == {}


@given(st.text(max_size=300), st.text(max_size=300))
def test_lock_keys_are_safe_and_never_shared(a: str, b: str) -> None:
    for name in (a, b):
        key = lock_key(name)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,32}-[0-9a-f]{32}", key), key
    assert (lock_key(a) == lock_key(b)) == (a == b)


@pytest.mark.parametrize("vm", ["a/b", "a_b", "../../etc/passwd", "", "x" * 1000, "vm\x00\n\u00e9"])
def test_any_vm_name_gets_its_own_file_inside_the_directory(tmp_path: Path, vm: str) -> None:
    registry = SessionRegistry(lock_dir=tmp_path / "s")
    registry.acquire(vm, RECOVERY, "job")
    assert [p.parent for p in (tmp_path / "s").iterdir()] == [tmp_path / "s"] * 2
    assert [(h.owner, h.kind) for h in registry.holders(vm)] == [("job", RECOVERY)]
    registry.release_all()


def test_similar_names_do_not_share_a_lock(tmp_path: Path) -> None:
    one, two = SessionRegistry(lock_dir=tmp_path), SessionRegistry(lock_dir=tmp_path)
    one.acquire("a/b", RECOVERY, "job-1")
    two.acquire("a_b", RECOVERY, "job-2")
    assert len(list(tmp_path.glob("a_b-*.lock"))) == 2
    one.release_all()
    two.release_all()


# -- the rule as a property over acquire/release sequences -------------------------------------

VMS = ("v1", "v2")
OWNERS = {"o0": 0, "o1": 0, "o2": 1, "o3": 2}  # owner -> the registry (process) it lives in


class Group(Protocol):
    """Three registries sharing a lock directory; ``reset`` starts a fresh directory."""

    lock_dir: Path

    def reset(self) -> None: ...
    def acquire(self, index: int, vm: str, kind: SessionKind, owner: str) -> bool: ...
    def release(self, index: int, vm: str, owner: str) -> None: ...
    def sessions(self, index: int, vm: str) -> dict[str, str]: ...
    def release_all(self) -> None: ...


class LocalGroup:
    """Registries in this process (each its own open file descriptions)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock_dir = root
        self.registries: list[SessionRegistry] = []

    def reset(self) -> None:
        self.lock_dir = Path(tempfile.mkdtemp(dir=self.root))
        self.registries = [SessionRegistry(lock_dir=self.lock_dir) for _ in range(3)]

    def acquire(self, index: int, vm: str, kind: SessionKind, owner: str) -> bool:
        try:
            self.registries[index].acquire(vm, kind, owner)
        except ConcurrentSessionError:
            return False
        return True

    def release(self, index: int, vm: str, owner: str) -> None:
        self.registries[index].release(vm, owner)

    def sessions(self, index: int, vm: str) -> dict[str, str]:
        return {o: k.name for o, k in self.registries[index].sessions(vm).items()}

    def release_all(self) -> None:
        for registry in self.registries:
            registry.release_all()


class ProcessGroup:
    """One real process per registry."""

    def __init__(self, root: Path, workers: list[Worker]) -> None:
        self.root = root
        self.lock_dir = root
        self.workers = workers

    def reset(self) -> None:
        self.lock_dir = Path(tempfile.mkdtemp(dir=self.root))

    def acquire(self, index: int, vm: str, kind: SessionKind, owner: str) -> bool:
        ok: bool = self.workers[index].acquire(self.lock_dir, vm, kind.name, owner)["ok"]
        return ok

    def release(self, index: int, vm: str, owner: str) -> None:
        self.workers[index].release(self.lock_dir, vm, owner)

    def sessions(self, index: int, vm: str) -> dict[str, str]:
        return self.workers[index].sessions(self.lock_dir, vm)

    def release_all(self) -> None:
        for w in self.workers:
            assert w.call("release_all")["ok"]


def machine_for(group: Group, outcomes: Counter[bool]) -> type[RuleBasedStateMachine]:
    class SessionRule(RuleBasedStateMachine):
        @initialize()
        def fresh(self) -> None:
            group.reset()
            self.reference = SessionRegistry()  # every owner in one registry: the rule itself

        @rule(
            owner=st.sampled_from(sorted(OWNERS)),
            vm=st.sampled_from(VMS),
            kind=st.sampled_from(SessionKind),
        )
        def acquire(self, owner: str, vm: str, kind: SessionKind) -> None:
            try:
                self.reference.acquire(vm, kind, owner)
                expected = True
            except ConcurrentSessionError:
                expected = False
            assert group.acquire(OWNERS[owner], vm, kind, owner) is expected
            outcomes[expected] += 1

        @rule(owner=st.sampled_from(sorted(OWNERS)), vm=st.sampled_from(VMS))
        def release(self, owner: str, vm: str) -> None:
            self.reference.release(vm, owner)
            group.release(OWNERS[owner], vm, owner)

        @invariant()
        def same_sessions_everywhere(self) -> None:
            if not hasattr(self, "reference"):
                return
            for vm in VMS:
                expected = {o: k.name for o, k in self.reference.sessions(vm).items()}
                seen: dict[str, str] = {}
                for index in range(3):
                    seen.update(group.sessions(index, vm))
                assert seen == expected
                # The holder records tell the same story to anyone looking from outside.
                records = {h.owner: h.kind.name for h in SessionFiles(group.lock_dir).holders(vm)}
                assert records == expected

        def teardown(self) -> None:
            group.release_all()

    return SessionRule


def test_the_rule_holds_across_registries_in_one_process(tmp_path: Path) -> None:
    outcomes: Counter[bool] = Counter()
    run_state_machine_as_test(
        machine_for(LocalGroup(tmp_path), outcomes),
        settings=settings(max_examples=100, stateful_step_count=30, deadline=None),
    )
    assert outcomes[True] > 50 and outcomes[False] > 20, outcomes  # both outcomes exercised


@pytest.fixture
def three_workers() -> Iterator[list[Worker]]:
    workers = [Worker() for _ in range(3)]
    yield workers
    for w in workers:
        w.close()


def test_the_rule_holds_across_real_processes(tmp_path: Path, three_workers: list[Worker]) -> None:
    outcomes: Counter[bool] = Counter()
    run_state_machine_as_test(
        machine_for(ProcessGroup(tmp_path, three_workers), outcomes),
        settings=settings(max_examples=40, stateful_step_count=30, deadline=None),
    )
    assert outcomes[True] > 20 and outcomes[False] > 10, outcomes
