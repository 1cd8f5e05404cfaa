"""The per-call hot path: READs of cached data and GETATTRs are answered at once (no task), with
the same bytes the awaited path gives; cached attributes never hide a change made through the
server; replies finished together go out in one write."""

from __future__ import annotations

import os
import random
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.nfs import connection, rpc
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import FileAttributes, SetAttributes, Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.rpc import AuthSys, RecordReader, decode_reply, encode_call
from liverecovery.nfs.server import NfsServer
from liverecovery.nfs.xdr import Packer, Part
from liverecovery.nfs.zero_copy import PipedData

pytestmark = pytest.mark.anyio

PEER = "127.0.0.1"


class AwaitedOnly(LocalFilesystem):
    """The same files, but ``read`` and ``getattr`` overridden: the server must await them."""

    async def read(self, fileid: int, offset: int, length: int) -> tuple[bytes, bool]:
        return await super().read(fileid, offset, length)

    async def getattr(self, fileid: int) -> FileAttributes:
        return await super().getattr(fileid)


@attrs.frozen
class Twin:
    server: NfsServer
    data: Path
    fast: bytes
    """Root handle of the export answered inline."""
    slow: bytes
    """Root handle of the same directory through ``AwaitedOnly``."""
    client: NfsClient


@pytest.fixture
async def twin(tmp_path: Path) -> AsyncIterator[Twin]:
    data = tmp_path / "data"
    data.mkdir()
    async with NfsServer(tmp_path / "state") as server:
        fast_fs, slow_fs = LocalFilesystem(data), AwaitedOnly(data)
        await server.export_filesystem("/fast", fast_fs, [PEER])
        await server.export_filesystem("/slow", slow_fs, [PEER])
        async with await NfsClient.connect(PEER, server.port, call_timeout=20) as c:
            yield Twin(server, data, await c.mount("/fast"), await c.mount("/slow"), c)
        await fast_fs.aclose()
        await slow_fs.aclose()


def _record(xid: int, proc: n3.Proc, args: n3.ReadArgs | n3.FhArgs) -> bytes:
    p = encode_call(xid, n3.NFS_PROGRAM, n3.NFS_VERSION, proc, AuthSys().encode())
    args.pack(p)
    return p.getvalue()


async def _answer(server: NfsServer, record: bytes) -> tuple[bool, bytes]:
    """Whether the server answered at once, and the reply's bytes."""
    answer = server._dispatcher.answer(record, PEER)
    at_once = answer is None or isinstance(answer, list)
    parts = answer if at_once else await answer  # type: ignore[misc]
    assert parts is not None
    return at_once, b"".join(_bytes(part) for part in parts)


def _bytes(part: object) -> bytes:
    if isinstance(part, PipedData):  # a spliced READ's data
        try:
            return part.take_bytes()
        finally:
            part.release()
    return bytes(part)  # type: ignore[call-overload]


def _same_file(a: FileAttributes | None, b: FileAttributes | None) -> None:
    assert a is not None and b is not None
    assert (a.type, a.size, a.fileid, a.mode, a.mtime_ns) == (
        b.type,
        b.size,
        b.fileid,
        b.mode,
        b.mtime_ns,
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 400_000),
    reads=st.lists(
        st.tuples(
            st.integers(0, 80_000),
            st.one_of(st.integers(0, 20_000), st.integers(128 * 1024 - 2, 300_000)),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_reads_answered_at_once_equal_the_awaited_answers(
    tmp_path: Path, size: int, reads: list[tuple[int, int]]
) -> None:
    async def main() -> None:
        sub = Path(tempfile.mkdtemp(dir=tmp_path))
        blob = random.Random(size).randbytes(size)
        async with NfsServer(sub / "state") as server:
            (sub / "data").mkdir()
            (sub / "data" / "f").write_bytes(blob)
            fast_fs, slow_fs = LocalFilesystem(sub / "data"), AwaitedOnly(sub / "data")
            await server.export_filesystem("/fast", fast_fs, [PEER])
            await server.export_filesystem("/slow", slow_fs, [PEER])
            async with await NfsClient.connect(PEER, server.port, call_timeout=20) as c:
                fast, _ = await c.lookup(await c.mount("/fast"), "f")
                slow, _ = await c.lookup(await c.mount("/slow"), "f")
                for xid, (offset, count) in enumerate(reads, 1):
                    at_once, quick = await _answer(
                        server, _record(xid, n3.Proc.READ, n3.ReadArgs(fast, offset, count))
                    )
                    awaited_once, awaited = await _answer(
                        server, _record(xid, n3.Proc.READ, n3.ReadArgs(slow, offset, count))
                    )
                    # Up to 128 KiB every READ of a cached file is answered at once (copied),
                    # larger ones are spliced by the awaited path.
                    assert at_once == (count <= 128 * 1024)
                    assert not awaited_once
                    q = n3.ReadRes.unpack(decode_reply(quick).results)  # type: ignore[arg-type]
                    w = n3.ReadRes.unpack(decode_reply(awaited).results)  # type: ignore[arg-type]
                    assert (q.status, q.eof, bytes(q.data)) == (w.status, w.eof, bytes(w.data))  # type: ignore[arg-type]
                    assert bytes(q.data) == blob[offset : offset + count]  # type: ignore[arg-type]
                    _same_file(q.attributes, w.attributes)
                    # GETATTR: the same attributes, at once for the inline export
                    at_once, quick = await _answer(
                        server, _record(xid, n3.Proc.GETATTR, n3.FhArgs(fast))
                    )
                    assert at_once
                    _, awaited = await _answer(
                        server, _record(xid, n3.Proc.GETATTR, n3.FhArgs(slow))
                    )
                    gq = n3.GetattrRes.unpack(decode_reply(quick).results)  # type: ignore[arg-type]
                    gw = n3.GetattrRes.unpack(decode_reply(awaited).results)  # type: ignore[arg-type]
                    _same_file(gq.attributes, gw.attributes)
            await fast_fs.aclose()
            await slow_fs.aclose()

    anyio.run(main)


async def test_refused_peer_gets_nothing_at_once(twin: Twin) -> None:
    (twin.data / "f").write_bytes(b"secret")
    fh, _ = await twin.client.lookup(twin.fast, "f")
    for proc, args in ((n3.Proc.READ, n3.ReadArgs(fh, 0, 6)), (n3.Proc.GETATTR, n3.FhArgs(fh))):
        answer = twin.server._dispatcher.answer(_record(1, proc, args), "127.0.0.2")
        parts = answer if isinstance(answer, list) else await answer  # type: ignore[misc]
        assert parts is not None
        reply = decode_reply(b"".join(bytes(p) for p in parts))  # type: ignore[arg-type]
        assert reply.results is not None
        assert reply.results.u32() == n3.NfsStatus.ACCES


async def test_cached_attributes_follow_changes_made_through_the_server(twin: Twin) -> None:
    (twin.data / "f").write_bytes(b"abc")
    fh, _ = await twin.client.lookup(twin.fast, "f")
    c = twin.client
    assert (await c.getattr(fh)).size == 3  # now cached
    assert (await c.getattr(fh)).size == 3
    await c.write(fh, 3, b"defg", Stability.UNSTABLE)
    assert (await c.getattr(fh)).size == 7
    await c.read(fh, 0, 2)  # READ re-caches them
    await c.setattr(fh, SetAttributes(size=1))
    assert (await c.getattr(fh)).size == 1
    assert await c.read(fh, 0, 10) == (b"a", True)
    assert (await c.getattr(fh)).size == 1
    mtime = (await c.getattr(fh)).mtime_ns
    await c.setattr(fh, SetAttributes(mtime_ns=mtime - 10**9))
    assert (await c.getattr(fh)).mtime_ns == mtime - 10**9


async def test_replies_finished_together_go_out_in_one_write(
    twin: Twin, monkeypatch: pytest.MonkeyPatch
) -> None:
    (twin.data / "f").write_bytes(os.urandom(8192))
    fh, _ = await twin.client.lookup(twin.fast, "f")
    writes: list[int] = []
    real_writev = os.writev

    def counting(fd: int, buffers: list[bytes]) -> int:
        writes.append(len(buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(connection.os, "writev", counting)
    n = 32
    wire = b""
    for xid in range(1, n + 1):
        call = (
            _record(xid, n3.Proc.READ, n3.ReadArgs(fh, xid * 100, 4096))
            if xid % 2
            else _record(xid, n3.Proc.GETATTR, n3.FhArgs(fh))
        )
        wire += struct.pack(">I", 0x80000000 | len(call)) + call
    with anyio.fail_after(20):
        async with await anyio.connect_tcp(PEER, twin.server.port) as stream:
            await stream.send(wire)
            reader = RecordReader(1 << 20)
            xids: set[int] = set()
            while len(xids) < n:
                reader.feed(await stream.receive())
                while (record := reader.next_record()) is not None:
                    xids.add(decode_reply(record).xid)
    assert xids == set(range(1, n + 1))
    assert 1 <= len(writes) < n // 4, writes  # one writev per received batch, not per reply


def _slow_decode(record: bytes) -> rpc.Call:
    known = rpc._known_call
    rpc._known_call = lambda _record: None  # type: ignore[assignment]
    try:
        return rpc.decode_call(record)
    finally:
        rpc._known_call = known


_creds = st.one_of(
    st.just(rpc.AUTH_NONE),
    st.builds(
        rpc.AuthSys,
        uid=st.integers(0, 2**32 - 1),
        gid=st.integers(0, 2**32 - 1),
        gids=st.lists(st.integers(0, 2**32 - 1), max_size=16).map(tuple),
        machine_name=st.text(max_size=40),
    ).map(rpc.AuthSys.encode),
    st.builds(rpc.OpaqueAuth, st.integers(0, 7), st.binary(max_size=40)),
)


@settings(max_examples=300, deadline=None)
@given(
    xid=st.integers(0, 2**32 - 1),
    proc=st.integers(0, 30),
    cred=_creds,
    verf=st.one_of(st.just(rpc.AUTH_NONE), _creds),
    args=st.binary(max_size=64),
    cut=st.one_of(st.none(), st.integers(0, 120)),
)
def test_the_quick_call_header_parse_equals_the_full_one(
    xid: int, proc: int, cred: rpc.OpaqueAuth, verf: rpc.OpaqueAuth, args: bytes, cut: int | None
) -> None:
    p = Packer()
    p.pack_struct(struct.Struct(">6I"), xid, 0, 2, n3.NFS_PROGRAM, n3.NFS_VERSION, proc)
    for auth in (cred, verf):
        p.u32(auth.flavor)
        p.opaque(auth.body)
    p.raw(args)
    record = p.getvalue()[:cut]
    for _ in range(2):  # the second time, AUTH_SYS credentials are known ones
        try:
            slow = _slow_decode(record)
        except rpc.RpcError as exc:
            with pytest.raises(type(exc)):
                rpc.decode_call(record)
            return
        quick = rpc._known_call(record)
        full = rpc.decode_call(record)
        for call in (quick, full) if quick is not None else (full,):
            assert call == slow
            assert call.args.position == slow.args.position


async def test_a_dispatch_that_raises_costs_only_its_own_call() -> None:
    """A dispatch answering at once that fails is logged like a failed task: no reply to that
    record, and the connection goes on answering the next ones, at once or awaited."""

    async def later() -> list[Part] | None:
        await anyio.sleep(0.01)
        return [b"later"]

    def dispatch(record: bytes | bytearray, peer: str) -> Any:
        if record == b"boom":
            raise RuntimeError("dispatch failed")
        return [b"now:" + bytes(record)] if record != b"wait" else later()

    table = connection.ConnectionTable(connection.ConnectionLimits())
    listener = await connection.listen(PEER, 0, dispatch, table)
    port = listener.sockets[0].getsockname()[1]
    try:
        with anyio.fail_after(20):
            async with await anyio.connect_tcp(PEER, port) as stream:
                wire = b"".join(
                    struct.pack(">I", 0x80000000 | len(r)) + r for r in (b"boom", b"wait", b"a")
                )
                await stream.send(wire)
                reader = RecordReader(1 << 20)
                got: list[bytes] = []
                while len(got) < 2:
                    reader.feed(await stream.receive())
                    while (record := reader.next_record()) is not None:
                        got.append(bytes(record))
                assert got == [b"now:a", b"later"]
    finally:
        listener.close()
        for conn in table:
            conn.close()
