"""Our server driven by our client: every procedure, RPC-level errors, concurrency, access
control, exports at run time, restarts."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from pathlib import Path

import anyio
import pytest

from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.errors import NfsClientError, NfsError, NfsStatus
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.connection import StreamTransport
from liverecovery.nfs.filesystem import (
    CreateMode,
    Filesystem,
    FileType,
    SetAttributes,
    Stability,
)
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.rpc import (
    AcceptStat,
    AuthStat,
    RejectStat,
    decode_reply,
    encode_call,
    record_header,
)
from liverecovery.nfs.server import NfsServer

from .conftest import EXPORT, Served

pytestmark = pytest.mark.anyio


async def test_file_lifecycle(served: Served, client: NfsClient) -> None:
    root = await client.mount(EXPORT)
    fh, attrs = await client.create(root, "a.txt", SetAttributes(mode=0o600))
    assert attrs is not None and attrs.type == FileType.REG and attrs.mode == 0o600
    res = await client.write(fh, 0, b"hello world", Stability.FILE_SYNC)
    assert (res.count, res.committed) == (11, Stability.FILE_SYNC)
    assert res.verifier == served.server.write_verifier
    assert res.wcc.after is not None and res.wcc.after.size == 11
    assert (served.data / "a.txt").read_bytes() == b"hello world"
    assert await client.read(fh, 0, 5) == (b"hello", False)
    assert await client.read(fh, 6, 100) == (b"world", True)
    assert await client.read(fh, 1000, 10) == (b"", True)  # past EOF
    lfh, lattrs = await client.lookup(root, "a.txt")
    assert lfh == fh and lattrs is not None and lattrs.fileid == attrs.fileid

    d, _ = await client.mkdir(root, "dir")
    await client.rename(root, "a.txt", d, "b.txt")
    assert (served.data / "dir" / "b.txt").read_bytes() == b"hello world"
    assert await client.read(fh, 0, 5) == (b"hello", False)  # the handle follows the file
    assert [e.name for e in await client.readdir(d)] == ["b.txt"]
    plus = await client.readdirplus(root)
    assert [(e.name, e.attributes.type if e.attributes else None) for e in plus] == [
        ("dir", FileType.DIR)
    ]
    assert plus[0].fh == d

    wcc = await client.setattr(fh, SetAttributes(size=3))
    assert wcc.before is not None and wcc.before.size == 11
    assert wcc.after is not None and wcc.after.size == 3
    stale_ctime = wcc.before.ctime_ns
    with pytest.raises(NfsError) as exc:
        await client.setattr(fh, SetAttributes(size=1), guard_ctime_ns=stale_ctime - 1)
    assert exc.value.status == NfsStatus.NOT_SYNC

    with pytest.raises(NfsError) as exc:
        await client.rmdir(root, "dir")
    assert exc.value.status == NfsStatus.NOTEMPTY
    await client.remove(d, "b.txt")
    with pytest.raises(NfsError) as exc:
        await client.getattr(fh)
    assert exc.value.status == NfsStatus.STALE
    await client.rmdir(root, "dir")
    assert os.listdir(served.data) == []


async def test_create_modes(client: NfsClient) -> None:
    root = await client.mount(EXPORT)
    await client.create(root, "g", mode=CreateMode.GUARDED)
    with pytest.raises(NfsError) as exc:
        await client.create(root, "g", mode=CreateMode.GUARDED)
    assert exc.value.status == NfsStatus.EXIST
    e1, _ = await client.create(root, "e", mode=CreateMode.EXCLUSIVE, verifier=b"verifier")
    e2, _ = await client.create(root, "e", mode=CreateMode.EXCLUSIVE, verifier=b"verifier")
    assert e1 == e2
    with pytest.raises(NfsError) as exc:
        await client.create(root, "e", mode=CreateMode.EXCLUSIVE, verifier=b"other!!!")
    assert exc.value.status == NfsStatus.EXIST
    for bad, status in (("a/b", NfsStatus.ACCES), ("x" * 256, NfsStatus.NAMETOOLONG)):
        with pytest.raises(NfsError) as exc:
            await client.create(root, bad)
        assert exc.value.status == status


async def test_links_mknod_access_and_fs_info(served: Served, client: NfsClient) -> None:
    root = await client.mount(EXPORT)
    fh, _ = await client.create(root, "f")
    s, sattrs = await client.symlink(root, "s", "f")
    assert sattrs is not None and sattrs.type == FileType.LNK
    assert await client.readlink(s) == "f"
    await client.link(fh, root, "hard")
    assert (await client.getattr(fh)).nlink == 2
    with pytest.raises(NfsError) as exc:
        await client.mknod(root, "fifo", n3.MknodArgs(root, "fifo", FileType.FIFO))
    assert exc.value.status == NfsStatus.NOTSUPP
    assert await client.access(root, n3.ACCESS_ALL) == n3.ACCESS_ALL
    assert await client.access(fh, n3.ACCESS_DELETE | n3.ACCESS_READ) == n3.ACCESS_READ

    info = await client.fsinfo(root)
    assert info.rtmax == info.wtmax == 1 << 20
    st = os.statvfs(served.data)
    fs = await client.fsstat(root)
    assert fs.tbytes == st.f_blocks * st.f_frsize and fs.tfiles == st.f_files
    pc = await client.pathconf(root)
    assert pc.name_max == 255 and pc.no_trunc


async def test_unstable_write_and_commit(served: Served, client: NfsClient) -> None:
    root = await client.mount(EXPORT)
    fh, _ = await client.create(root, "u")
    res = await client.write(fh, 4096, b"x" * 100_000, Stability.UNSTABLE)
    assert res.committed == Stability.UNSTABLE
    assert await client.commit(fh) == res.verifier == served.server.write_verifier
    assert (served.data / "u").stat().st_size == 4096 + 100_000
    data, eof = await client.read(fh, 0, 1 << 20)
    assert data == b"\0" * 4096 + b"x" * 100_000 and eof


async def test_max_size_io(client: NfsClient) -> None:
    root = await client.mount(EXPORT)
    fh, _ = await client.create(root, "big")
    blob = os.urandom(1 << 20)
    assert (await client.write(fh, 0, blob)).count == 1 << 20
    assert await client.read(fh, 0, 1 << 20) == (blob, True)
    assert await client.read(fh, 0, 4 << 20) == (blob, True)  # clamped to rtmax


class CountedReads(MemoryFilesystem):
    """A filesystem that keeps ``Filesystem``'s default ``read_file_range``; counts ``read``."""

    reads = 0

    async def read(self, fileid: int, offset: int, length: int) -> tuple[bytes, bool]:
        self.reads += 1
        return await super().read(fileid, offset, length)


async def test_a_filesystem_without_read_file_range_is_served_through_read(
    tmp_path: Path,
) -> None:
    fs = CountedReads()
    assert type(fs).read_file_range is Filesystem.read_file_range
    assert await fs.read_file_range(fs.root_id, 0, 1) is None
    blob = os.urandom(512 * 1024)
    fid = await fs.create(fs.root_id, "f.bin", SetAttributes())
    await fs.write(fid, 0, blob, Stability.FILE_SYNC)
    async with NfsServer(tmp_path / "state") as server:
        await server.export_filesystem("/m", fs, ["127.0.0.1"])
        async with await NfsClient.connect("127.0.0.1", server.port) as c:
            fh, _ = await c.lookup(await c.mount("/m"), "f.bin")
            half = len(blob) // 2
            assert await c.read(fh, 0, half) == (blob[:half], False)
            assert await c.read(fh, half, half) == (blob[half:], True)
            assert await c.read(fh, 0, 100) == (blob[:100], False)
        assert fs.reads == 3
        pool = server._pipes
        assert pool is None or pool.loaded == 0  # nothing spliced


class SlowReads(LocalFilesystem):
    """A backend whose reads take 5 s, like a cold backup."""

    async def read(self, fileid: int, offset: int, count: int) -> tuple[bytes, bool]:
        await anyio.sleep(5)
        return await super().read(fileid, offset, count)


async def test_slow_read_does_not_delay_getattr_on_same_connection(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"abc")
    async with NfsServer(tmp_path / "state") as server:
        await server.export_filesystem("/s", SlowReads(tmp_path / "d"), ["127.0.0.1"])
        async with await NfsClient.connect("127.0.0.1", server.port) as c:
            root = await c.mount("/s")
            fh, _ = await c.lookup(root, "f")
            order: list[str] = []
            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:

                    async def slow() -> None:
                        assert await c.read(fh, 0, 3) == (b"abc", True)
                        order.append("read")

                    tg.start_soon(slow)
                    await anyio.sleep(0.2)  # the READ is now in the server
                    t0 = time.monotonic()
                    for _ in range(5):
                        assert (await c.getattr(fh)).size == 3
                    heartbeat = time.monotonic() - t0
                    order.append("getattr")
            assert heartbeat < 1.0
            assert order == ["getattr", "read"]


async def test_access_control(served: Served, client: NfsClient) -> None:
    root = await client.mount(EXPORT)
    fh, _ = await client.create(root, "f")
    await served.server.set_clients(EXPORT, ["10.11.12.13"])
    with pytest.raises(NfsError) as exc:
        await client.mount(EXPORT)
    assert exc.value.status == NfsStatus.ACCES
    for call in (client.getattr(fh), client.read(fh, 0, 1), client.readdir(root)):
        with pytest.raises(NfsError) as exc:
            await call
        assert exc.value.status == NfsStatus.ACCES
    await served.server.set_clients(EXPORT, ["127.0.0.0/8"])
    assert (await client.getattr(fh)).type == FileType.REG


async def test_forged_and_unknown_handles(served: Served, client: NfsClient) -> None:
    root = await client.mount(EXPORT)
    fh, _ = await client.create(root, "f")
    forged = bytearray(fh)
    forged[12] ^= 1  # another file id, MAC not recomputed
    for bad in (bytes(forged), b"x" * 36, b"", fh[:10]):
        with pytest.raises(NfsError) as exc:
            await client.getattr(bad)
        assert exc.value.status == NfsStatus.BADHANDLE
    with pytest.raises(NfsError) as exc:
        await client.mount("/nope")
    assert exc.value.status == NfsStatus.NOENT


async def test_composite_exports_publish_unpublish_unexport(tmp_path: Path) -> None:
    (tmp_path / "vm1").mkdir()
    (tmp_path / "vm1" / "vm1.vmx").write_text("displayName = vm1\n")
    async with NfsServer(tmp_path / "state") as server:
        info = await server.export("/liverecovery/esx1", ["127.0.0.1"])
        assert server.exports() == {"/liverecovery/esx1": info}
        async with await NfsClient.connect("127.0.0.1", server.port) as c:
            root = await c.mount("/liverecovery/esx1")
            assert await c.readdir(root) == []
            fs = LocalFilesystem(tmp_path / "vm1")
            await server.publish("/liverecovery/esx1", "job-1", fs)
            (entry,) = await c.readdir(root)
            assert entry.name == "job-1"
            folder, _ = await c.lookup(root, "job-1")
            vmx, _ = await c.lookup(folder, "vm1.vmx")
            assert (await c.read(vmx, 0, 100))[0] == b"displayName = vm1\n"
            lck, _ = await c.create(folder, ".lck-0000000000000001")  # ESXi's lock files
            await c.write(lck, 0, b"lock")
            assert (await c.lookup(folder, ".."))[0] == root
            with pytest.raises(NfsError) as exc:
                await c.create(root, "stray")
            assert exc.value.status == NfsStatus.ACCES
            sub = await c.mount("/liverecovery/esx1/job-1")
            assert sub == folder
            assert (await c.getattr(vmx)).size == 18  # its attributes now cached by the server
            await server.unpublish("/liverecovery/esx1", "job-1")
            with pytest.raises(NfsError) as exc:
                await c.getattr(vmx)
            assert exc.value.status == NfsStatus.STALE
            await server.unexport("/liverecovery/esx1")
            with pytest.raises(NfsError) as exc:
                await c.getattr(root)
            assert exc.value.status == NfsStatus.STALE
            # Exported again: handles of the old generation stay stale.
            await server.export("/liverecovery/esx1", ["127.0.0.1"])
            with pytest.raises(NfsError) as exc:
                await c.getattr(root)
            assert exc.value.status == NfsStatus.STALE
            assert (await c.getattr(await c.mount("/liverecovery/esx1"))).type == FileType.DIR


async def test_restart_keeps_handles_and_changes_verifier(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    handles = {}
    verifiers = []
    for round_ in range(2):
        async with NfsServer(tmp_path / "state") as server:
            await server.export_filesystem("/e", LocalFilesystem(data), ["127.0.0.1"])
            async with await NfsClient.connect("127.0.0.1", server.port) as c:
                if round_ == 0:
                    root = await c.mount("/e")
                    d, _ = await c.mkdir(root, "d")
                    fh, _ = await c.create(d, "f")
                    w = await c.write(fh, 0, b"before restart", Stability.UNSTABLE)
                    await c.commit(fh)
                    handles = {"root": root, "d": d, "f": fh}
                    verifiers.append(w.verifier)
                else:
                    # No MNT, no LOOKUP: the handles from before the restart just work.
                    assert await c.read(handles["f"], 0, 100) == (b"before restart", True)
                    assert [e.name for e in await c.readdir(handles["d"])] == ["f"]
                    w = await c.write(handles["f"], 0, b"B", Stability.UNSTABLE)
                    verifiers.append(w.verifier)
                    assert await c.mount("/e") == handles["root"]
    assert verifiers[0] != verifiers[1]


async def test_portmap_and_mount_bookkeeping(served: Served) -> None:
    port = served.server.port
    async with await NfsClient.connect(
        "127.0.0.1", portmap_port=served.server.portmap_port
    ) as c:  # NFS and MOUNT ports come from our portmapper
        root = await c.mount(EXPORT)
        assert (await c.getattr(root)).type == FileType.DIR
        assert [(e.directory, e.groups) for e in await c.exports()] == [(EXPORT, ("127.0.0.1",))]
        assert [(m.hostname, m.directory) for m in await c.mounts()] == [("127.0.0.1", EXPORT)]
        await c.umount(EXPORT)
        assert await c.mounts() == []
    assert await NfsClient.getport("127.0.0.1", 100003, 3, portmap_port=port) == port
    with pytest.raises(NfsClientError, match="not registered"):
        await NfsClient.getport("127.0.0.1", 100003, 2, portmap_port=port)


async def raw_call(port: int, record: bytes) -> bytes | None:
    """Send one record; return the reply record, or None when the server closed."""
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(record_header(len(record)) + record)
        buf = b""
        with anyio.fail_after(10):
            try:
                while len(buf) < 4 or len(buf) < 4 + (struct.unpack(">I", buf[:4])[0] & 0x7FFFFFFF):
                    buf += await s.receive()
            except anyio.EndOfStream:
                return None
        return buf[4:]


def call_record(prog: int, vers: int, proc: int, args: bytes = b"", xid: int = 7) -> bytes:
    p = encode_call(xid, prog, vers, proc)
    p.raw(args)
    return p.getvalue()


async def test_rpc_level_errors(served: Served) -> None:
    port = served.server.port

    async def accept_stat(record: bytes) -> tuple[AcceptStat | None, tuple[int, int] | None]:
        reply = decode_reply(await raw_call(port, record) or b"")
        assert reply.xid == 7 and reply.accepted
        return reply.accept_stat, reply.mismatch

    assert await accept_stat(call_record(100003, 3, 0)) == (AcceptStat.SUCCESS, None)
    assert await accept_stat(call_record(123456, 1, 0)) == (AcceptStat.PROG_UNAVAIL, None)
    assert await accept_stat(call_record(100003, 2, 0)) == (AcceptStat.PROG_MISMATCH, (3, 3))
    assert await accept_stat(call_record(100005, 1, 0)) == (AcceptStat.PROG_MISMATCH, (3, 3))
    assert await accept_stat(call_record(100003, 3, 99)) == (AcceptStat.PROC_UNAVAIL, None)
    assert await accept_stat(call_record(100005, 3, 9)) == (AcceptStat.PROC_UNAVAIL, None)
    for proc in range(1, 22):  # every NFS procedure with truncated arguments
        assert await accept_stat(call_record(100003, 3, proc, b"\0\0\0\x05ab")) == (
            AcceptStat.GARBAGE_ARGS,
            None,
        )
    assert await accept_stat(call_record(100005, 3, 1, b"\xff\xff\xff\xff")) == (
        AcceptStat.GARBAGE_ARGS,
        None,
    )
    bad_version = bytearray(call_record(100003, 3, 0))
    bad_version[8:12] = struct.pack(">I", 3)
    reply = decode_reply(await raw_call(port, bytes(bad_version)) or b"")
    assert reply.reject_stat == RejectStat.RPC_MISMATCH and reply.mismatch == (2, 2)
    gss = bytearray(call_record(100003, 3, 0))
    gss[24:28] = struct.pack(">I", 6)
    reply = decode_reply(await raw_call(port, bytes(gss)) or b"")
    assert reply.reject_stat == RejectStat.AUTH_ERROR and reply.auth_stat == AuthStat.TOOWEAK


async def test_oversized_record_closes_only_that_connection(
    served: Served, client: NfsClient
) -> None:
    root = await client.mount(EXPORT)
    async with await anyio.connect_tcp("127.0.0.1", served.server.port) as s:
        await s.send(struct.pack(">I", 0x80000000 | (64 << 20)) + b"\0" * 1000)
        with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            while True:
                await s.receive()
    assert (await client.getattr(root)).type == FileType.DIR


async def test_many_calls_in_flight_on_one_connection(client: NfsClient) -> None:
    root = await client.mount(EXPORT)
    fh, _ = await client.create(root, "f")
    blob = os.urandom(256 * 1024)
    await client.write(fh, 0, blob)
    results: dict[int, bytes] = {}

    async def read(i: int) -> None:
        results[i] = (await client.read(fh, i * 4096, 4096))[0]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(read, i)
    assert all(results[i] == blob[i * 4096 : (i + 1) * 4096] for i in range(64))


async def test_server_is_an_nfs_exporter(tmp_path: Path) -> None:
    from liverecovery.backends import NfsExporter

    server = NfsServer(tmp_path / "state")
    assert isinstance(server, NfsExporter)
    await server.aclose()  # closing a server that never started is a no-op


async def test_half_sent_record_is_dropped_after_timeout(tmp_path: Path) -> None:
    async with (
        NfsServer(tmp_path / "state", partial_record_timeout=0.5) as server,
        await anyio.connect_tcp("127.0.0.1", server.port) as s,
    ):
        await s.send(struct.pack(">I", 0x80000000 | 1000) + b"\0" * 10)  # 990 bytes never come
        t0 = time.monotonic()
        with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await s.receive()
        assert 0.3 < time.monotonic() - t0 < 5


@pytest.mark.parametrize("grace_s", [0.0, 30.0])
async def test_grace_period_after_a_restart(tmp_path: Path, grace_s: float) -> None:
    """Until a restarted process has exported and published again, handles from before the
    restart get JUKEBOX (retry later) during the grace period, STALE without one; an export
    that was removed stays STALE either way."""
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "vm.vmx").write_text("displayName = vm\n")
    fs = LocalFilesystem(tmp_path / "vm")
    async with NfsServer(tmp_path / "state") as server:
        await server.export("/lr/esx1", ["127.0.0.1"])
        await server.export("/lr/gone", ["127.0.0.1"])
        await server.publish("/lr/esx1", "job-1", fs)
        async with await NfsClient.connect("127.0.0.1", server.port) as c:
            root = await c.mount("/lr/esx1")
            gone = await c.mount("/lr/gone")
            folder, _ = await c.lookup(root, "job-1")
            vmx, _ = await c.lookup(folder, "vm.vmx")
        await server.unexport("/lr/gone")
    waiting = NfsStatus.JUKEBOX if grace_s else NfsStatus.STALE
    async with (
        NfsServer(tmp_path / "state", grace_s=grace_s) as again,
        await NfsClient.connect("127.0.0.1", again.port) as c,
    ):
        for fh in (root, vmx):  # the export is not back yet
            with pytest.raises(NfsError) as exc:
                await c.getattr(fh)
            assert exc.value.status == waiting
        await again.export("/lr/esx1", ["127.0.0.1"])
        assert (await c.getattr(root)).type == FileType.DIR
        with pytest.raises(NfsError) as exc:  # the folder is not published yet
            await c.read(vmx, 0, 100)
        assert exc.value.status == waiting
        with pytest.raises(NfsError) as exc:  # a running VM's WRITE and COMMIT wait too
            await c.write(vmx, 0, b"x", Stability.FILE_SYNC)
        assert exc.value.status == waiting
        with pytest.raises(NfsError) as exc:
            await c.commit(vmx)
        assert exc.value.status == waiting
        with pytest.raises(NfsError) as exc:
            await c.write(vmx, 0, b"x", Stability.UNSTABLE)
        assert exc.value.status == waiting
        with pytest.raises(NfsError) as exc:
            await c.lookup(folder, "vm.vmx")
        assert exc.value.status == waiting
        await again.publish("/lr/esx1", "job-1", fs)
        assert await c.read(vmx, 0, 100) == (b"displayName = vm\n", True)
        with pytest.raises(NfsError) as exc:
            await c.getattr(gone)
        assert exc.value.status == NfsStatus.STALE


async def test_the_server_runs_on_the_loop_under_test(
    served: Served, client: NfsClient, anyio_backend: tuple[str, dict[str, object]]
) -> None:
    """The uvloop runs really are on uvloop, whose transports are not ``asyncio.Transport``:
    the connection accepts any transport with the methods it uses."""
    loop = asyncio.get_running_loop()
    uses_uvloop = bool(anyio_backend[1].get("use_uvloop"))
    assert type(loop).__module__.startswith("uvloop") == uses_uvloop
    (served.data / "f").write_bytes(b"hello")
    root = await client.mount(served.path)
    fh, _ = await client.lookup(root, "f")
    assert await client.read(fh, 0, 10) == (b"hello", True)
    transports = [conn._transport for conn in served.server.connections]
    assert transports
    for transport in transports:
        assert isinstance(transport, StreamTransport)
        assert isinstance(transport, asyncio.Transport) != uses_uvloop
