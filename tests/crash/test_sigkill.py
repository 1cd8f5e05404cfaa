"""SIGKILL the serving process at random points while a client writes; nothing acknowledged
as stable (FILE_SYNC, DATA_SYNC, or UNSTABLE then COMMITted) may be lost.

Each write goes to its own 4 KiB slot, so after the restart every slot must hold exactly its
write if it was made durable, and either its write or the backup's bytes otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.errors import LiveRecoveryError
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import Stability
from liverecovery.testing.samples import expected_read, sample_vm

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

SIZE = 8 << 20
SLOT = 4096
SERVER = Path(__file__).parent / "serve_disk.py"


def start(work: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), str(work)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.isdigit(), f"serving process printed {line!r}"
    return proc, int(line)


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


Op = tuple[str, int]  # ("sync" | "unstable" | "commit", slot)

ops_strategy = st.lists(
    st.tuples(st.sampled_from(["sync", "data", "unstable", "commit"]), st.integers(0, 10**6)),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=60 if os.environ.get("LIVERECOVERY_SLOW") else 6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=ops_strategy, kill_at=st.integers(0, 40), mid_write=st.booleans())
async def test_acknowledged_writes_survive_sigkill(
    tmp_path_factory: pytest.TempPathFactory, ops: list[Op], kill_at: int, mid_write: bool
) -> None:
    work = tmp_path_factory.mktemp("crash")
    vm = sample_vm("vm", disk_sizes=(SIZE,), head=SIZE // 2)
    vm.write(work / "backup")
    size, runs = vm.disks[0]
    slots = list(range(SIZE // SLOT))
    durable: dict[int, bytes] = {}
    maybe: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}  # UNSTABLE, not yet committed
    proc, port = start(work)
    try:
        async with await NfsClient.connect("127.0.0.1", port, call_timeout=30) as client:
            root = await client.mount("/lr/h")
            folder = await client.lookup_path(root, "vm-crashjob")
            fh, _ = await client.lookup(folder, "vm-flat.vmdk")
            verifier = b""
            for n, (kind, pick) in enumerate(ops):
                if n == kill_at:
                    break
                if kind == "commit":
                    if await client.commit(fh) == verifier:
                        durable.update(pending)
                        pending.clear()
                    continue
                slot = slots.pop(pick % len(slots))
                data = os.urandom(SLOT)
                stability = {
                    "sync": Stability.FILE_SYNC,
                    "data": Stability.DATA_SYNC,
                    "unstable": Stability.UNSTABLE,
                }[kind]
                res = await client.write(fh, slot * SLOT, data, stability)
                verifier = res.verifier
                if res.committed == Stability.UNSTABLE:
                    pending[slot] = data
                else:
                    durable[slot] = data
            if mid_write and slots:
                # One more write in flight when the process dies: it may or may not land.
                slot = slots.pop()
                data = os.urandom(SLOT)
                maybe[slot] = data
                async with anyio.create_task_group() as tg:

                    async def late_write(slot: int = slot, data: bytes = data) -> None:
                        with contextlib.suppress(LiveRecoveryError):
                            await client.write(fh, slot * SLOT, data, Stability.FILE_SYNC)

                    tg.start_soon(late_write)
                    await anyio.lowlevel.checkpoint()
                    await anyio.to_thread.run_sync(kill, proc)
            else:
                await anyio.to_thread.run_sync(kill, proc)
    finally:
        if proc.poll() is None:
            kill(proc)
    maybe.update(pending)
    proc, port = start(work)
    try:
        async with await NfsClient.connect("127.0.0.1", port, call_timeout=30) as client:
            await client.mount("/lr/h")
            for slot in range(SIZE // SLOT):
                if slot not in durable and slot not in maybe:
                    continue
                got, _ = await client.read(fh, slot * SLOT, SLOT)  # the handle from before
                backup = expected_read(size, runs, slot * SLOT, SLOT)
                if slot in durable:
                    assert got == durable[slot], f"acknowledged write to slot {slot} lost"
                else:
                    assert got in (maybe[slot], backup), f"slot {slot} holds neither"
            if verifier:
                assert await client.commit(fh) != verifier  # a restarted server's verifier
    finally:
        kill(proc)
