"""Two serving nodes over one RGW bucket, in real processes, and a takeover.

The simulated ESX host (its own process) mounts the datastore from the service address
127.0.0.2, which node A serves (portmapper, MOUNT and NFS bound on it); the VM powers on and
its guest writes. Node A is SIGKILLed. Node B, watching A's lease in the store, takes it over
once it has not been renewed for ``lease_s``, installs the handle key and the export registry
from the store, binds 127.0.0.2 on the same port and resumes A's job from its journal. The
host's hard mount reconnects: the VM keeps running (no I/O error), the storage vMotion
completes, and the migrated disk holds every write the guest had acknowledged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from liverecovery.catalog.objects import S3Location, StoreOptions
from liverecovery.catalog.shared_state import DirectorySharedState, ObjectSharedState
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.datastore.overlay_store import restore_overlay
from liverecovery.sim.remote import RemoteSimulatedHost
from liverecovery.testing.objstore import RadosGateway, object_digests, upload_tree
from liverecovery.testing.samples import expected_read, sample_vm

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

HERE = Path(__file__).parent
SIZE = 8 << 20
HOST = "esx-takeover"


class Process:
    """A child process whose stdout lines we follow."""

    def __init__(
        self, *args: str | Path, env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.log = open(log, "w") if log else None  # noqa: SIM115 - closed by kill
        self.proc = subprocess.Popen(
            [sys.executable, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
            env=env,
        )
        self.lines: list[str] = []

    def until(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"process exited ({self.proc.wait()}) after {self.lines}")
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.log is not None:
            self.log.close()


async def test_a_dead_nodes_vm_keeps_running_on_the_other_node(
    rgw: RadosGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4().hex[:8]
    vm = sample_vm("vm", disk_sizes=(SIZE,), head=SIZE // 2)
    vm.write(tmp_path / "backup")
    upload_tree(rgw.store(), tmp_path / "backup", f"takeover-{run}/backups")
    backup_url = rgw.url(f"takeover-{run}/backups")
    state_url = rgw.url(f"takeover-{run}/state")
    before = object_digests(rgw.store(), f"takeover-{run}/backups")
    env = rgw.environ(PYTHONPATH=os.pathsep.join(sys.path))
    work = tmp_path / "work"
    work.mkdir()

    socket = tmp_path / "esx.sock"
    esx = Process(
        "-m", "liverecovery.sim.remote", socket, tmp_path / "esx", "--name", HOST,
        "--heartbeat-s", "0.2", "--write-interval-s", "0.01",
    )  # fmt: skip
    nodes: list[Process] = []
    try:
        assert esx.until("ready") == "ready"
        host = RemoteSimulatedHost(socket, call_timeout=60)

        def node(name: str, mode: str) -> Process:
            args = (work, socket, HOST, name, state_url, backup_url, mode)
            nodes.append(Process(HERE / "run_node.py", *args, env=env, log=work / f"{name}.log"))
            return nodes[-1]

        a = node("a", "start")
        assert a.until("lease") == "lease 1"
        b = node("b", "standby")  # watches A's lease
        a.until("state serving")
        (moved,) = await host.vms()
        started = time.monotonic()
        while len(await host.guest_writes(moved)) <= 10:  # the guest writes on A for a while
            assert time.monotonic() - started < 60, "the guest does not write"
            time.sleep(0.05)  # noqa: ASYNC251 - the guest writes in another process
        writes_at_kill = len(await host.guest_writes(moved))
        killed_at = time.monotonic()
        a.kill()
        # what A left in the store (B deletes the job's state once the job is done): A's epoch
        # is final now, B writes under its own
        for name, value in rgw.environ().items():
            if name.startswith("AWS_"):
                monkeypatch.setenv(name, value)
        state = ObjectSharedState(S3Location.parse(state_url), StoreOptions())
        left_by_a = DirectorySharedState(tmp_path / "left-by-a")
        for key in await state.keys("jobs"):
            got = await state.get(key)
            assert got is not None
            await left_by_a.create(key, got.data)

        assert b.until("lease") == "lease 2"
        assert b.until("journals") == "journals 1"  # A's journal, from the store
        b.until("listening")
        assert b.until("resumed") == "resumed 1"
        while len(await host.guest_writes(moved)) <= writes_at_kill + 1:
            if time.monotonic() - killed_at > 60:
                status = await host.vm_status(moved)
                raise AssertionError(f"no guest write after the takeover: {status}")
            time.sleep(0.05)  # noqa: ASYNC251
        takeover_s = time.monotonic() - killed_at
        print(f"takeover: kill to the first acknowledged guest write {takeover_s:.2f} s")
        done = b.until("done")
        assert done == "done completed -", b.lines
        assert not any(line.startswith("fenced") for line in b.lines), b.lines
        # A's journal was mirrored in the store up to the kill: what B restored from there is
        # the start of the journal A left, and holds the power-on
        (restored,) = (work / "restored-journals").iterdir()
        left = (work / "results-a" / "journal" / restored.name).read_bytes()
        assert left.startswith(restored.read_bytes())
        assert b'"powered_on"' in restored.read_bytes()

        # the same handles: B's NFS state is A's (key and export ids), from the store
        key = "handle-key"
        assert (work / "nfs-a" / key).read_bytes() == (work / "nfs-b" / key).read_bytes()
        ids_a = json.loads((work / "nfs-a" / "exports.json").read_text())
        ids_b = json.loads((work / "nfs-b" / "exports.json").read_text())
        assert ids_a.keys() == ids_b.keys() and ids_a
        for path, entry in ids_a.items():  # B unexported at the end: one generation on
            assert ids_b[path] == {"id": entry["id"], "generation": entry["generation"] + 1}
        status = await host.vm_status(moved)
        assert status["powered_on"] and status["migrated"] and not status["io_error"], status
        await host.power_off(moved)
        size, runs = vm.disks[0]
        expected = bytearray(expected_read(size, runs, 0, size))
        writes = await host.guest_writes(moved)
        assert len(writes) > writes_at_kill > 10
        for w in writes:
            expected[w.offset : w.offset + len(w.data)] = w.data
        path = await host.disk_path(moved, 0)
        assert path is not None and path.read_bytes() == bytes(expected)
        assert await host.nfs_datastores(HOST) == []
        assert object_digests(rgw.store(), f"takeover-{run}/backups") == before

        # the files the host created in the VM folder on A were in the store under A's epoch,
        # with the ids B served them under
        (index_key,) = [k for k in await left_by_a.keys("jobs") if "/files/index/" in k]
        index = await left_by_a.get(index_key)
        assert index is not None
        names = set(json.loads(index.data)["entries"])
        assert {"vm.vmx", "vm.vswp", "vmware.log"} <= names, names
        assert any(n.startswith(".lck-") for n in names), names

        # every write A acknowledged is in the store under A's epoch: the overlay a node
        # rebuilds from there holds the guest's writes up to some point at or after the last
        # one acknowledged before the kill
        keys = [k.split("/") for k in await left_by_a.keys("jobs")]
        disks = {tuple(k[1:4:2]) for k in keys if k[2] == "overlay"}
        assert len(disks) == 1, disks
        ((job_id, disk),) = disks
        rebuilt = await WriteOverlay.open(tmp_path / "rebuilt-overlay", size=size)
        try:
            assert await restore_overlay(left_by_a, job_id, disk, rebuilt, up_to_epoch=1) > 0
            held = rebuilt.held(0, size)
            got = {start: await rebuilt.read(start, n) for start, n in held}
            for w in writes[:writes_at_kill]:
                assert rebuilt.holds_any(w.offset, len(w.data)), w.offset
        finally:
            await rebuilt.aclose()
        image = bytearray(expected_read(size, runs, 0, size))
        for w in writes[:writes_at_kill]:
            image[w.offset : w.offset + len(w.data)] = w.data
        matches = []
        for k in range(writes_at_kill, len(writes) + 1):
            if k > writes_at_kill:
                w = writes[k - 1]
                image[w.offset : w.offset + len(w.data)] = w.data
            if all(image[start : start + n] == got[start] for start, n in held):
                matches.append(k)
        assert matches, "the store lacks a write A acknowledged"

        # the job is done: nothing of it is left in the store (overlay, files, journal)
        b.until("forgotten")
        assert await state.keys("jobs") == []
        assert await state.keys("journals") == []
    finally:
        for p in nodes:
            p.kill()
        esx.kill()
