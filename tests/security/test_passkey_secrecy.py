"""The restore passkey never reaches logs, events, exceptions, the journal or any file.

Whole jobs run on the embedded environment (our NFS server, the simulated ESX host, the on-disk
cache and overlays, the journal) with a configured passkey: one succeeds, one fails late (a fault
at power-on, after the passkey was accepted), two fail preflight (wrong passkey, none). Every log
record of every logger at DEBUG, every event, every exception with its chain and notes, the
summaries, and every byte of every file under the work directory (taken at each state change and
at the end) are searched for the passkeys in clear and in their obvious encodings.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import anyio
import attrs
import pytest

from liverecovery import LiveRecovery, Settings, State, StateChanged
from liverecovery.config import MiB, Passkey
from liverecovery.errors import BackendError, PasskeyError
from liverecovery.job.job import RecoveryJob
from liverecovery.sim.embedded import Embedded, embedded_environment
from liverecovery.testing import MemoryCatalog
from liverecovery.testing.faults import FaultPlan
from liverecovery.testing.faulty import faulty

from .capture import AllLogs, encodings, exception_text

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

SECRET = "Sesame-7391-Ünïcødé-pass"
WRONG = "Guessed-0042-wrong-pass"


NEEDLES = {name: encodings(s) for name, s in (("passkey", SECRET), ("wrong passkey", WRONG))}


def leaks(where: str, data: bytes | str) -> list[str]:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return [
        f"{name} in {where} as {needle!r}"
        for name, needles in NEEDLES.items()
        for needle in needles
        if needle in data
    ]


def written_bytes(path: Path) -> bytes:
    """A file's data extents (holes read as zeros and cannot hold a secret: a VM's sparse swap
    file is gigabytes of them)."""
    parts: list[bytes] = []
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        end, offset = os.fstat(fd).st_size, 0
        while offset < end:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # no data after offset
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            parts.append(os.pread(fd, stop - start, start))
            offset = stop
    finally:
        os.close(fd)
    return b"\0".join(parts)


def scan_files_sync(root: Path, where: str, scanned: set[Path]) -> list[str]:
    found: list[str] = []
    # os.walk, not rglob: a folder the job removes mid-walk is skipped, not an error.
    paths = sorted(Path(d) / n for d, _dirs, files in os.walk(root) for n in files)
    for p in paths:
        if p.is_file() and not p.is_symlink():
            try:
                found += leaks(f"{where}: {p.relative_to(root)}", written_bytes(p))
            except OSError:
                continue  # removed while the job runs
            scanned.add(p)
        found += leaks(f"{where}: file name", str(p))
    return found


async def scan_files(root: Path, where: str, scanned: set[Path]) -> list[str]:
    """Every file under ``root``, in a worker thread (the job keeps running meanwhile)."""
    return await anyio.to_thread.run_sync(scan_files_sync, root, where, scanned)


@attrs.define
class Run:
    summary_text: str = ""
    texts: list[str] = attrs.field(factory=list)
    file_leaks: list[str] = attrs.field(factory=list)
    scanned: set[Path] = attrs.field(factory=set)
    error: BaseException | None = None
    states: list[State] = attrs.field(factory=list)


async def run_job(
    env: Embedded, lr: LiveRecovery, work: Path, passkey: str | None, suffix: str
) -> Run:
    run = Run()
    job: RecoveryJob = await lr.start(env.spec("vm", passkey=passkey, name_suffix=suffix))
    with anyio.fail_after(60):
        async for event in job.events():  # every event, from the first
            run.texts.append(repr(event))
            if isinstance(event, StateChanged):
                run.states.append(event.state)
                run.file_leaks += await scan_files(
                    work, f"files at {event.state.value}", run.scanned
                )
        try:
            summary = await job.wait()
        except Exception as exc:
            run.error = exc
            run.texts.append(exception_text(exc))
            summary = job.summary()
    run.texts += [repr(summary), json.dumps(summary.to_json()), repr(job.stats), repr(job)]
    run.texts += [exception_text(e) for e in job.errors]
    run.texts += [repr(job.spec), str(job.spec), repr(attrs.evolve(job.spec))]
    run.summary_text = repr(summary)
    run.file_leaks += await scan_files(work, "files at the end", run.scanned)
    return run


def settings(tmp: Path) -> Settings:
    return Settings(
        job_results_dir=tmp / "results",
        restore_passkey=Passkey.from_secret(SECRET),
        migration_trigger="delay",
        serve_before_migrate_s=0.1,
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        compensation_retry_delay_s=0,
        progress_interval_s=0.02,
    )


async def test_passkey_appears_nowhere_through_success_and_failures(
    tmp_path: Path, all_logs: AllLogs, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = MemoryCatalog()
    catalog.add_vm("vm", disk_sizes=(16 * MiB,), data_per_disk=1 * MiB)
    plan = FaultPlan()
    runs: dict[str, Run] = {}
    async with embedded_environment(tmp_path, catalog, settings=settings(tmp_path)) as env:
        backends = attrs.evolve(env.backends, vsphere=faulty(env.esx, plan, "vsphere"))
        async with LiveRecovery(env.settings, backends, builder=env.builder) as lr:
            runs["right passkey"] = await run_job(env, lr, tmp_path, SECRET, "-1")
            plan.fail("vsphere.power_on", BackendError("power-on refused", operation="power_on"))
            runs["fault after the passkey"] = await run_job(env, lr, tmp_path, SECRET, "-2")
            plan.clear()
            runs["wrong passkey"] = await run_job(env, lr, tmp_path, WRONG, "-3")
            runs["no passkey"] = await run_job(env, lr, tmp_path, None, "-4")
    # The runs did what they were meant to, so the search below had something to search.
    ok, late, wrong, none = runs.values()
    assert ok.error is None and ok.states[-1] is State.COMPLETED, ok.summary_text
    assert State.SERVING not in late.states and late.states[-1] is State.FAILED
    assert State.STAGING in late.states or State.REGISTERING in late.states, late.states
    assert isinstance(late.error, BackendError) and "power-on refused" in str(late.error)
    for r in (wrong, none):
        assert isinstance(r.error, PasskeyError) and r.states[-1] is State.FAILED
    journals = list((tmp_path / "results" / "journal").glob("*.journal"))
    assert len(journals) == 4 and all(j.stat().st_size > 0 for j in journals)
    names = {p.name for p in ok.scanned}  # what the search went through while the job ran:
    assert {"handle-key", "exports.json", "data", "vm.vmx"} <= names, sorted(names)
    assert any(p.suffix == ".journal" for p in ok.scanned)

    found: list[str] = []
    for name, r in runs.items():
        found += r.file_leaks
        found += [x for t in r.texts for x in leaks(name, t)]
    found += [x for line in all_logs.lines for x in leaks("logs", line)]
    out, err = capsys.readouterr()
    found += leaks("stdout", out) + leaks("stderr", err)
    assert not found, found[:10]


def test_the_search_finds_a_leak() -> None:
    """The needles match what a leak would look like (the test above could fail)."""
    assert leaks("x", f"job failed: passkey {SECRET!r} wrong")
    assert leaks("x", json.dumps({"spec": {"passkey": SECRET}}).encode())
    assert leaks("x", base64.b64encode(WRONG.encode()))
    assert leaks("x", repr(attrs.asdict(_SpecLike(SECRET))))
    assert not leaks("x", Passkey.from_secret(SECRET).encode())


@attrs.frozen
class _SpecLike:
    passkey: str
