"""Hypothesis feeds random and mutated RPC records to a live server: it never crashes, answers
every call (or closes a connection that does not speak RPC) and keeps serving other clients."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import attrs
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs.filesystem import SetAttributes, Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.rpc import AuthSys, decode_reply, encode_call
from liverecovery.nfs.server import NfsServer
from liverecovery.nfs.xdr import Packer


@attrs.frozen
class Live:
    port: int
    root: bytes
    file: bytes


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A server on its own event loop thread, so synchronous hypothesis tests can hammer it."""
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "data").mkdir()
    (tmp / "data" / "f").write_bytes(b"x" * 10_000)
    with start_blocking_portal("asyncio") as portal:
        server = NfsServer(tmp / "state", max_record_size=256 * 1024, max_in_flight=8)
        portal.call(server.start)
        portal.call(server.export_filesystem, "/e", LocalFilesystem(tmp / "data"), ["127.0.0.1"])
        exp = server.registry.get("/e")
        assert exp is not None
        root = server.registry.handle(exp, exp.fs.root_id)
        fid = (tmp / "data" / "f").stat().st_ino
        yield Live(server.port, root, server.registry.handle(exp, fid))
        portal.call(server.aclose)


def frame(record: bytes) -> bytes:
    return struct.pack(">I", 0x80000000 | len(record)) + record


def exchange(
    port: int, data: bytes, *, half_close: bool = True, expect: int | None = None
) -> tuple[list[bytes], bool]:
    """Send bytes; collect reply records until the server closes, goes quiet for 2 s, or
    ``expect`` records have arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        closed = False
        s.settimeout(2)
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    closed = True
                    break
                buf += chunk
                if expect is not None and len(_split(buf)[0]) >= expect:
                    break
        except TimeoutError:
            pass
    return _split(buf)[0], closed


def _split(buf: bytes) -> tuple[list[bytes], bytes]:
    records = []
    while len(buf) >= 4:
        n = struct.unpack(">I", buf[:4])[0] & 0x7FFFFFFF
        if len(buf) < 4 + n:
            break
        records.append(buf[4 : 4 + n])
        buf = buf[4 + n :]
    return records, buf


def still_serving(live: Live) -> None:
    p = encode_call(4242, n3.NFS_PROGRAM, 3, n3.Proc.GETATTR)
    n3.FhArgs(live.root).pack(p)
    records, _ = exchange(live.port, frame(p.getvalue()), half_close=False, expect=1)
    assert len(records) == 1
    reply = decode_reply(records[0])
    assert reply.xid == 4242 and reply.results is not None and reply.results.u32() == 0


def valid_calls(live: Live) -> list[bytes]:
    cred = AuthSys(uid=0, gid=0, machine_name="fuzz").encode()
    calls = []
    args: list[tuple[int, object]] = [
        (n3.Proc.GETATTR, n3.FhArgs(live.root)),
        (n3.Proc.LOOKUP, n3.DiropArgs(live.root, "f")),
        (n3.Proc.READ, n3.ReadArgs(live.file, 0, 4096)),
        (n3.Proc.WRITE, n3.WriteArgs(live.file, 0, Stability.UNSTABLE, b"y" * 100)),
        (n3.Proc.READDIRPLUS, n3.ReaddirplusArgs(live.root, 0, b"\0" * 8, 4096, 65536)),
        (n3.Proc.SETATTR, n3.SetattrArgs(live.file, SetAttributes(mode=0o644))),
        (n3.Proc.CREATE, n3.CreateArgs(live.root, "new", attributes=SetAttributes())),
        (n3.Proc.RENAME, n3.RenameArgs(live.root, "new", live.root, "new2")),
        (n3.Proc.COMMIT, n3.CommitArgs(live.file)),
    ]
    for proc, a in args:
        p = encode_call(1, n3.NFS_PROGRAM, 3, proc, cred)
        a.pack(p)  # type: ignore[attr-defined]
        calls.append(p.getvalue())
    mnt = Packer()
    mnt.string("/e")
    calls.append(encode_call(1, 100005, 3, 1, cred).getvalue() + mnt.getvalue())
    calls.append(encode_call(1, 100000, 2, 3).getvalue() + struct.pack(">IIII", 100003, 3, 6, 0))
    return calls


@st.composite
def mutated(draw: st.DrawFn, base: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(base)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "word"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "word" and len(data) >= pos + 4:
            data[pos : pos + 4] = struct.pack(
                ">I", draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20]))
            )
    return bytes(data)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=st.data())
def test_mutated_calls_are_answered_or_closed(live: Live, data: st.DataObject) -> None:
    record = data.draw(mutated(valid_calls(live)))
    records, closed = exchange(live.port, frame(record))
    is_call = len(record) >= 24 and record[4:8] == b"\0\0\0\0"
    if is_call:
        # A call whose header decodes is always answered, with its own xid.
        assert len(records) == 1 and records[0][:4] == record[:4]
        decode_reply(records[0])
    else:
        assert closed and not records
    still_serving(live)


@FUZZ
@given(st.binary(max_size=3000), st.booleans())
def test_random_bytes_never_hurt_the_server(live: Live, blob: bytes, framed: bool) -> None:
    records, closed = exchange(live.port, frame(blob) if framed else blob)
    assert records or closed  # never a hang: answered, or closed at our EOF
    for r in records:
        decode_reply(r)
    still_serving(live)


def test_slow_loris_and_oversized_records(live: Live) -> None:
    _, closed = exchange(live.port, struct.pack(">I", 0x7FFFFFFF) + b"a" * 100)
    assert closed
    many = b"".join(frame(b"\0" * 3 + bytes([i])) for i in range(200))  # 200 short garbage records
    _, closed = exchange(live.port, many)
    assert closed
    still_serving(live)


def test_many_calls_pipelined_on_one_connection(live: Live) -> None:
    calls = valid_calls(live)
    pipeline = b"".join(frame(struct.pack(">I", i) + c[4:]) for i, c in enumerate(calls * 20))
    records, _ = exchange(live.port, pipeline, half_close=False, expect=len(calls) * 20)
    assert sorted(struct.unpack(">I", r[:4])[0] for r in records) == list(range(len(calls) * 20))
