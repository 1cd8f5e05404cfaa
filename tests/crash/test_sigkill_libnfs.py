"""SIGKILL the serving process while a real NFS client, libnfs, writes to the disk.

libnfs sends a write through a handle opened ``O_SYNC`` as FILE_SYNC and any other as UNSTABLE,
and ``nfs_fsync`` sends a COMMIT of the whole file (the first test checks this against a
recording server, since the accounting below rests on it). libnfs does not compare write
verifiers, and it reconnects on its own; so a write only counts as durable once libnfs returned
from it on an ``O_SYNC`` handle, or from an ``nfs_fsync`` after it, and the writer is killed
before the server comes back, so every call it reports finished talked to the killed server.

After the restart, both our client (still using the handle from before the crash) and a fresh
libnfs mount read back every slot: each durable write exactly, the others either their write or
the backup's bytes; and the write verifier changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import Stability
from liverecovery.nfs.server import NfsServer
from liverecovery.testing.samples import expected_read, sample_vm

from .test_sigkill import kill, start

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

SIZE = 8 << 20
SLOT = 4096
WRITER = Path(__file__).parent / "libnfs_writer.py"
DISK = "/vm-crashjob/vm-flat.vmdk"
LINE_TIMEOUT_S = 20.0


def spawn(mode: str, url: str, path: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), mode, url, path, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def send(proc: subprocess.Popen[str], text: str, *, close: bool = False) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text)
    proc.stdin.flush()
    if close:
        proc.stdin.close()


def next_line(proc: subprocess.Popen[str]) -> dict[str, Any] | None:
    """The child's next JSON line, or None at end of output."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], LINE_TIMEOUT_S)
    assert ready, "the libnfs child went quiet"
    line = proc.stdout.readline()
    if not line:
        return None
    out: dict[str, Any] = json.loads(line)
    assert "failed" not in out, f"libnfs failed while the server was up: {out}"
    return out


def finish(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Every line a child prints until it exits, which it must do cleanly."""
    lines = []
    while (line := next_line(proc)) is not None:
        lines.append(line)
    assert proc.wait(timeout=LINE_TIMEOUT_S) == 0
    assert proc.stdout is not None
    proc.stdout.close()
    return lines


def run_writer(plan_file: Path, url: str, path: str, plan: list[list[Any]]) -> list[dict[str, Any]]:
    """The libnfs writer with a go-ahead for every op of ``plan``."""
    plan_file.write_text(json.dumps(plan))
    proc = spawn("write", url, path, str(plan_file))
    send(proc, "go\n" * len(plan), close=True)
    return finish(proc)


def run_reader(url: str, path: str, offsets: list[int]) -> dict[int, bytes]:
    """A fresh libnfs mount reading one slot at each offset."""
    proc = spawn("read", url, path)
    send(proc, json.dumps([[o, SLOT] for o in offsets]), close=True)
    (line,) = finish(proc)
    return {int(k): bytes.fromhex(v) for k, v in line["slots"].items()}


class RecordingFilesystem(MemoryFilesystem):
    """Remembers the stability of every write and every commit it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, Stability | None]] = []

    async def write(self, fileid: int, offset: int, data: bytes, stability: Stability) -> Stability:
        self.calls.append(("write", offset, stability))
        return await super().write(fileid, offset, data, stability)

    async def commit(self, fileid: int) -> None:
        self.calls.append(("commit", 0, None))
        await super().commit(fileid)


async def test_libnfs_writes_o_sync_as_file_sync_and_fsync_as_commit(tmp_path: Path) -> None:
    fs = RecordingFilesystem()
    fs.add_file("/d/disk", bytes(4 * SLOT))
    blobs = [os.urandom(SLOT) for _ in range(3)]
    plan = [
        ["sync", 0, blobs[0].hex()],
        ["plain", SLOT, blobs[1].hex()],
        ["fsync"],
        ["plain", 3 * SLOT, blobs[2].hex()],
    ]
    async with NfsServer(tmp_path / "state", host="127.0.0.1") as server:
        await server.export_filesystem("/e", fs, ["127.0.0.1"])
        with anyio.fail_after(60):
            lines = await anyio.to_thread.run_sync(
                run_writer, tmp_path / "plan.json", server.url("/e"), "/d/disk", plan
            )
    assert lines == [{"open": True}] + [{"done": n} for n in range(len(plan))]
    assert fs.calls == [
        ("write", 0, Stability.FILE_SYNC),
        ("write", SLOT, Stability.UNSTABLE),
        ("commit", 0, None),
        ("write", 3 * SLOT, Stability.UNSTABLE),
    ]
    assert fs.file_bytes("/d/disk") == blobs[0] + blobs[1] + bytes(SLOT) + blobs[2]


Op = tuple[str, int]  # ("sync" | "plain" | "fsync", pick)

ops_strategy = st.lists(
    st.tuples(st.sampled_from(["sync", "plain", "fsync"]), st.integers(0, 10**6)),
    min_size=1,
    max_size=24,
)
# The ops, and how many of them finish before the kill (the next is in flight).
scenarios = ops_strategy.flatmap(lambda ops: st.tuples(st.just(ops), st.integers(0, len(ops))))


def writer_until_kill(
    plan_file: Path,
    url: str,
    plan: list[list[Any]],
    kill_after: int,
    burst: bool,
    server: subprocess.Popen[str],
) -> int:
    """Run the libnfs writer op by op; once ``kill_after`` ops are done, let the next one go
    (``burst``: all the rest) and SIGKILL the server at once, then the writer. Returns how many
    ops libnfs reported done, every one of them against the killed server."""
    plan_file.write_text(json.dumps(plan))
    writer = spawn("write", url, DISK, str(plan_file))
    try:
        assert next_line(writer) == {"open": True}
        done = 0
        while done < kill_after:
            send(writer, "go\n")
            assert next_line(writer) == {"done": done}
            done += 1
        send(writer, "go\n" * (len(plan) - done if burst else 1))
        kill(server)  # whatever the writer is doing now is in flight when the server dies
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=LINE_TIMEOUT_S)
    assert writer.stdout is not None
    for line in writer.stdout:  # what it finished after the last line read, before the kill
        if json.loads(line) == {"done": done}:
            done += 1
    writer.stdout.close()
    if writer.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            writer.stdin.close()
    return done


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario=scenarios, burst=st.booleans())
async def test_what_libnfs_was_told_is_stable_survives_sigkill(
    tmp_path_factory: pytest.TempPathFactory, scenario: tuple[list[Op], int], burst: bool
) -> None:
    ops, kill_after = scenario
    work = tmp_path_factory.mktemp("crash-libnfs")
    vm = sample_vm("vm", disk_sizes=(SIZE,), head=SIZE // 2)
    vm.write(work / "backup")
    size, runs = vm.disks[0]
    free = list(range(SIZE // SLOT))
    plan: list[list[Any]] = []
    for n, (kind, pick) in enumerate(ops):
        if kind == "fsync":
            plan.append(["fsync"])
        else:
            slot = free.pop(pick % len(free))
            data = random.Random(f"{n}:{pick}").randbytes(SLOT)
            plan.append([kind, slot * SLOT, data.hex()])
    proc, port = start(work)
    try:
        async with await NfsClient.connect("127.0.0.1", port, call_timeout=30) as client:
            root = await client.mount("/lr/h")
            folder = await client.lookup_path(root, "vm-crashjob")
            fh, _ = await client.lookup(folder, "vm-flat.vmdk")
            verifier = await client.commit(fh)  # this server's boot verifier
            url = f"nfs://127.0.0.1/lr/h?version=3&nfsport={port}&mountport={port}"
            with anyio.fail_after(90):
                done = await anyio.to_thread.run_sync(
                    writer_until_kill, work / "plan.json", url, plan, kill_after, burst, proc
                )
    finally:
        if proc.poll() is None:
            kill(proc)
    durable: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}  # acknowledged UNSTABLE, no fsync returned since
    maybe: dict[int, bytes] = {}  # never acknowledged: in flight or not started
    for n, op in enumerate(plan):
        if op[0] == "fsync":
            if n < done:
                durable.update(pending)
                pending.clear()
            continue
        offset, data = op[1], bytes.fromhex(op[2])
        if n >= done:
            maybe[offset] = data
        elif op[0] == "sync":
            durable[offset] = data
        else:
            pending[offset] = data
    maybe.update(pending)
    offsets = sorted([*durable, *maybe])
    proc, port = start(work)
    try:
        async with await NfsClient.connect("127.0.0.1", port, call_timeout=30) as client:
            await client.mount("/lr/h")
            ours = {}
            for offset in offsets:
                ours[offset], _ = await client.read(fh, offset, SLOT)  # the handle from before
            url = f"nfs://127.0.0.1/lr/h?version=3&nfsport={port}&mountport={port}"
            with anyio.fail_after(60):
                theirs = await anyio.to_thread.run_sync(run_reader, url, DISK, offsets)
            assert await client.commit(fh) != verifier  # a restarted server's verifier
    finally:
        kill(proc)
    for offset in offsets:
        got = ours[offset]
        assert theirs[offset] == got, f"libnfs and our client read different bytes at {offset}"
        if offset in durable:
            assert got == durable[offset], f"write at {offset} lost though libnfs acknowledged it"
        else:
            backup = expected_read(size, runs, offset, SLOT)
            assert got in (maybe[offset], backup), f"slot at {offset} holds neither"
