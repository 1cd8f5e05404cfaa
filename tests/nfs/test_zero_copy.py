"""Zero-copy READ replies (file -> pipe -> socket) answer exactly what the copying path answers,
keep every record whole under concurrency and back-pressure, and survive a file that shrinks
under them."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import attrs
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.io.ranges import FileRange
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs import zero_copy
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import SetAttributes, Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.rpc import AuthSys, RecordReader, decode_reply, encode_call
from liverecovery.nfs.server import MAX_IO, NfsServer
from liverecovery.nfs.xdr import Packer, Unpacker
from tests.nfs.loops import LOOPS

MiB = 1 << 20
PROPS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

pytestmark = pytest.mark.skipif(not zero_copy.zero_copy_supported(), reason="splice is Linux-only")


# -- the codec: a payload placeholder encodes like the bytes it stands for ---------------------


class _FakePayload:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


@given(st.binary(max_size=70_000), st.booleans())
def test_payload_encodes_like_the_bytes_it_stands_for(data: bytes, eof: bool) -> None:
    attributes = None
    by_bytes = Packer()
    n3.ReadRes(n3.NfsStatus.OK, attributes, eof, data).pack(by_bytes, 1)
    by_payload = Packer()
    payload = _FakePayload(len(data))
    n3.ReadRes(n3.NfsStatus.OK, attributes, eof, payload).pack(by_payload, 1)
    with pytest.raises(TypeError):
        by_payload.chunks()  # a payload cannot be sent as plain buffers by mistake
    parts = by_payload.parts()
    assert sum(1 for p in parts if p is payload) == 1
    joined = b"".join(data if p is payload else bytes(p) for p in parts)  # type: ignore[arg-type]
    assert joined == by_bytes.getvalue()
    back = n3.ReadRes.unpack(Unpacker(joined))
    assert (back.eof, bytes(back.data)) == (eof, data)  # type: ignore[arg-type]


# -- a live server on its own thread, for the property tests ----------------------------------


@attrs.frozen
class Live:
    portal: BlockingPortal
    server: NfsServer
    fs: LocalFilesystem
    client: NfsClient
    data: Path
    root: bytes

    def handle(self, name: str) -> tuple[bytes, int]:
        fh, _ = self.portal.call(self.client.lookup, self.root, name)
        return fh, (self.data / name).stat().st_ino


@pytest.fixture(scope="module", params=LOOPS)
def live(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Live]:
    """The server on its own thread, on each event loop (asyncio's, uvloop's)."""
    tmp = tmp_path_factory.mktemp("zero-copy")
    data = tmp / "data"
    data.mkdir()
    backend, options = request.param
    with start_blocking_portal(backend, options) as portal:
        server = NfsServer(tmp / "state")
        portal.call(server.start)
        fs = LocalFilesystem(data)
        portal.call(server.export_filesystem, "/e", fs, ["127.0.0.1"])

        async def connect() -> NfsClient:
            return await NfsClient.connect("127.0.0.1", server.port, call_timeout=20)

        client = portal.call(connect)
        root = portal.call(client.mount, "/e")
        try:
            yield Live(portal, server, fs, client, data, root)
        finally:
            portal.call(client.aclose)
            portal.call(server.aclose)
            portal.call(fs.aclose)


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _read_cases(data: st.DataObject, size: int, n: int) -> list[tuple[int, int]]:
    near_eof = st.integers(max(0, size - 70_000), size + 70_000)
    offsets = st.one_of(st.integers(0, size + 70_000), near_eof, st.just(size), st.just(0))
    counts = st.one_of(
        st.just(0),
        st.integers(1, 100),
        st.integers(16 * 1024 - 1, MiB + 5000),  # around the splice threshold up to > MAX_IO
        st.just(MiB),
    )
    return [(data.draw(offsets), data.draw(counts)) for _ in range(n)]


@PROPS
@given(data=st.data())
def test_spliced_reads_equal_the_bytes_path(live: Live, data: st.DataObject) -> None:
    size = data.draw(st.one_of(st.integers(0, 3 * MiB), st.integers(0, 70_000)), label="size")
    blob = _blob(size, data.draw(st.integers(0, 1 << 30), label="seed"))
    (live.data / "prop.bin").write_bytes(blob)
    fh, fid = live.handle("prop.bin")
    for offset, count in _read_cases(data, size, 4):
        got, eof = live.portal.call(live.client.read, fh, offset, count)
        want, want_eof = live.portal.call(live.fs.read, fid, offset, min(count, MAX_IO))
        assert (got, eof) == (bytes(want), want_eof), (offset, count, size)
        assert got == blob[offset : offset + min(count, MAX_IO)]
        assert eof == (offset + len(got) >= size)


def test_large_reads_are_spliced_and_small_ones_copied(live: Live) -> None:
    blob = _blob(2 * MiB + 123, 7)
    (live.data / "big.bin").write_bytes(blob)
    fh, _ = live.handle("big.bin")
    pool = live.server._pipes
    assert pool is not None
    before = pool.loaded
    assert live.portal.call(live.client.read, fh, 0, 4096) == (blob[:4096], False)
    assert pool.loaded == before  # small: copied
    assert live.portal.call(live.client.read, fh, MiB, MiB) == (blob[MiB : 2 * MiB], False)
    assert live.portal.call(live.client.read, fh, 2 * MiB, MiB) == (blob[2 * MiB :], True)
    assert pool.loaded == before + 2
    assert pool.in_use == 0
    # ... and spliced to the socket through the connection's duplicate (on either loop):
    assert any(conn._raw is not None for conn in live.server.connections)


# -- a real client: libnfs reads random ranges ------------------------------------------------


def _libnfs_preads(url: str, reads: list[tuple[str, int, int]]) -> list[bytes]:
    res = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("libnfs_peer.py")), "preads", url],
        input=json.dumps(reads).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return [bytes.fromhex(h) for h in json.loads(res.stdout)["hex"]]


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_libnfs_reads_random_ranges(live: Live, data: st.DataObject) -> None:
    size = data.draw(st.integers(0, 3 * MiB), label="size")
    blob = _blob(size, data.draw(st.integers(0, 1 << 30), label="seed"))
    (live.data / "libnfs.bin").write_bytes(blob)
    cases = [(o, max(c, 1)) for o, c in _read_cases(data, size, 6)]
    got = _libnfs_preads(
        live.server.url("/e"), [("/libnfs.bin", offset, count) for offset, count in cases]
    )
    for (offset, count), bytes_read in zip(cases, got, strict=True):
        assert bytes_read == blob[offset : offset + count], (offset, count, size)


# -- framing: pipelined READs and WRITEs on one connection, read late -------------------------


def _call(xid: int, proc: n3.Proc, args: n3.ReadArgs | n3.WriteArgs) -> bytes:
    p = encode_call(xid, n3.NFS_PROGRAM, n3.NFS_VERSION, proc, AuthSys().encode())
    args.pack(p)
    body = p.getvalue()
    return struct.pack(">I", 0x80000000 | len(body)) + body


def _replies(sock: socket.socket, n: int) -> dict[int, bytes | bytearray]:
    reader = RecordReader(2 * MiB)
    out: dict[int, bytes | bytearray] = {}
    while len(out) < n:
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection closed after {len(out)} of {n} replies"
        reader.feed(chunk)
        while (record := reader.next_record()) is not None:
            reply = decode_reply(record)
            assert reply.xid not in out
            out[reply.xid] = record
    return out


@pytest.mark.parametrize("aligned", [True, False])
def test_pipelined_reads_and_writes_keep_records_whole(live: Live, aligned: bool) -> None:
    """Many calls sent at once, replies read late: spliced replies meet a full socket and every
    reply behind them waits its turn (aligned: every large READ is spliced); unaligned 1 MiB
    READs span more pages than a pipe holds and are copied, mixing both ways of sending."""
    blob = _blob(8 * MiB, 11)
    (live.data / "pipe.bin").write_bytes(blob)
    (live.data / "target.bin").write_bytes(b"")
    src, _ = live.handle("pipe.bin")
    dst, _ = live.handle("target.bin")
    rng = random.Random(3)
    calls: dict[int, tuple[str, int, int]] = {}
    wire = bytearray()
    for xid in range(1, 61):
        if xid % 3 == 0:
            payload = bytes([xid]) * 65536
            wire += _call(
                xid, n3.Proc.WRITE, n3.WriteArgs(dst, xid * 65536, Stability.UNSTABLE, payload)
            )
            calls[xid] = ("write", xid * 65536, 65536)
        else:
            offset = rng.randrange(8 * MiB)
            if aligned:
                offset -= offset % 4096
            count = rng.choice([MiB, 300_000, 20_000, 4096])
            wire += _call(xid, n3.Proc.READ, n3.ReadArgs(src, offset, count))
            calls[xid] = ("read", offset, count)
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(wire)
        time.sleep(0.5)  # replies pile up: the server meets a full socket and must queue
        replies = _replies(sock, len(calls))
    for xid, (kind, offset, count) in calls.items():
        results = decode_reply(replies[xid]).results
        assert results is not None
        if kind == "read":
            res = n3.ReadRes.unpack(results)
            assert res.status == n3.NfsStatus.OK
            want = blob[offset : offset + count]
            assert bytes(res.data) == want, (xid, offset, count)  # type: ignore[arg-type]
            assert res.eof == (offset + len(want) >= len(blob))
        else:
            wres = n3.WriteRes.unpack(results)
            assert (wres.status, wres.count) == (n3.NfsStatus.OK, count)
    target = (live.data / "target.bin").read_bytes()
    for xid, (kind, offset, count) in calls.items():
        if kind == "write":
            assert target[offset : offset + count] == bytes([xid]) * count
    deadline = time.monotonic() + 10
    pool = live.server._pipes
    assert pool is not None
    while pool.in_use and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.in_use == 0


def test_client_vanishing_mid_reply_leaks_no_pipe(live: Live) -> None:
    (live.data / "gone.bin").write_bytes(_blob(4 * MiB, 5))
    src, _ = live.handle("gone.bin")
    pool = live.server._pipes
    assert pool is not None
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", live.server.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.sendall(
                b"".join(
                    _call(x, n3.Proc.READ, n3.ReadArgs(src, (x % 4) * MiB, MiB))
                    for x in range(1, 41)
                )
            )
            time.sleep(0.2)
            sock.recv(1000)
        # closed with most replies unsent
    # Pipes that still held data were closed (the pool keeps only its few idle ones), and the
    # server let go of the connections' sockets and their duplicates.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        pool.in_use or len(os.listdir("/proc/self/fd")) > fds_before + 2
    ):
        time.sleep(0.01)
    assert pool.in_use == 0
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
    fh, _ = live.handle("gone.bin")  # the server still answers
    assert live.portal.call(live.client.read, fh, 0, 10)[0] == _blob(4 * MiB, 5)[:10]


# -- a file that shrinks between locating the range and splicing it ---------------------------


class _ShrinkingFilesystem(LocalFilesystem):
    """Truncates the file right after handing out its range: the race, made certain."""

    shrink_to: int | None = None

    async def read_file_range(self, fileid: int, offset: int, count: int) -> FileRange | None:
        rng = await super().read_file_range(fileid, offset, count)
        if rng is not None and self.shrink_to is not None:
            os.ftruncate(rng.fd, self.shrink_to)
        return rng


@pytest.fixture
async def shrinking(tmp_path: Path) -> AsyncIterator[tuple[NfsServer, _ShrinkingFilesystem]]:
    data = tmp_path / "data"
    data.mkdir()
    async with NfsServer(tmp_path / "state") as server:
        fs = _ShrinkingFilesystem(data)
        await server.export_filesystem("/e", fs, ["127.0.0.1"])
        yield server, fs
        await fs.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("shrink_to", [MiB + 1000, MiB, 100, 0])
async def test_file_truncated_before_the_splice_gives_a_short_read(
    shrinking: tuple[NfsServer, _ShrinkingFilesystem], shrink_to: int
) -> None:
    server, fs = shrinking
    blob = _blob(3 * MiB, 9)
    path = fs.root / "shrink.bin"
    path.write_bytes(blob)
    with anyio.fail_after(30):
        async with await NfsClient.connect("127.0.0.1", server.port, call_timeout=20) as c:
            root = await c.mount("/e")
            fh, _ = await c.lookup(root, "shrink.bin")
            fs.shrink_to = shrink_to
            data, eof = await c.read(fh, MiB, MiB)
            fs.shrink_to = None
            want = blob[:shrink_to][MiB : 2 * MiB]
            assert (data, eof) == (want, True)
            # The stream is intact: more calls on the same connection get proper answers.
            assert (await c.getattr(fh)).size == shrink_to
            path.write_bytes(blob)
            assert await c.read(fh, MiB, MiB) == (blob[MiB : 2 * MiB], False)
            await c.write(fh, 0, b"after", Stability.FILE_SYNC)
            assert (await c.read(fh, 0, 5))[0] == b"after"


@pytest.mark.anyio
async def test_composite_export_splices_only_where_the_folder_can(tmp_path: Path) -> None:
    """A composite root forwards ``read_file_range`` to folders that have it (a local
    directory); an in-memory folder is read through ``read`` as before."""
    data = tmp_path / "data"
    data.mkdir()
    blob = _blob(2 * MiB, 13)
    (data / "disk.bin").write_bytes(blob)
    local = LocalFilesystem(data)
    memory = MemoryFilesystem()
    mem_file = await memory.create(memory.root_id, "m.bin", SetAttributes())
    await memory.write(mem_file, 0, blob, Stability.FILE_SYNC)
    with anyio.fail_after(30):
        async with NfsServer(tmp_path / "state") as server:
            await server.export("/esx", ["127.0.0.1"])
            await server.publish("/esx", "local", local)
            await server.publish("/esx", "memory", memory)
            pool = server._pipes
            assert pool is not None
            async with await NfsClient.connect("127.0.0.1", server.port, call_timeout=20) as c:
                root = await c.mount("/esx")
                on_disk = await c.lookup_path(root, "local/disk.bin")
                in_memory = await c.lookup_path(root, "memory/m.bin")
                assert await c.read(on_disk, MiB, MiB) == (blob[MiB:], True)
                assert pool.loaded == 1
                assert await c.read(in_memory, 0, MiB) == (blob[:MiB], False)
                assert pool.loaded == 1  # copied: memory has no file to splice from
        await local.aclose()


# -- the pipe pool and the loader on their own -------------------------------------------------


@pytest.mark.anyio
async def test_loader_falls_back_and_never_leaks_a_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    blob = _blob(3 * MiB, 17)
    path.write_bytes(blob)
    pool = zero_copy.PipePool(MiB, max_pipes=1, keep_idle=1)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert zero_copy.resident(fd, 0, len(blob))  # just written: in the page cache
        rng = FileRange(os.dup(fd), 4096, MiB)
        loaded = await zero_copy.load(pool, rng)
        assert loaded is not None
        data, eof = loaded
        assert (data.nbytes, eof, pool.in_use) == (MiB, False, 1)
        with pytest.raises(OSError):
            os.fstat(rng.fd)  # the loader closed the range's descriptor
        # The only pipe is taken: the next range is refused (read through the copying path).
        other = FileRange(os.dup(fd), 0, MiB)
        assert await zero_copy.load(pool, other) is None
        with pytest.raises(OSError):
            os.fstat(other.fd)
        assert data.take_bytes() == blob[4096 : 4096 + MiB]
        data.release()
        data.release()  # idempotent
        assert pool.in_use == 0
        # Wider than a pipe (an unaligned 1 MiB spans 257 pages on a 1 MiB pipe): refused.
        slots = pool.acquire(0, 4096)
        assert slots is not None
        pool.give_back(slots, empty=True)
        wide = FileRange(os.dup(fd), 1, pool._slots * 4096)
        assert await zero_copy.load(pool, wide) is None
        # Past the end of the file: what is there, and eof.
        tail = await zero_copy.load(pool, FileRange(os.dup(fd), len(blob) - 10, 100))
        assert tail is not None
        assert (tail[0].take_bytes(), tail[1]) == (blob[-10:], True)
        tail[0].release()
    finally:
        os.close(fd)
        pool.close()
