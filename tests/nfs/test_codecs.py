"""Pure codecs: XDR, RPC record marking and messages, NFSv3/MOUNT/PORTMAP round trips."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.errors import NfsStatus
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs.filesystem import (
    SERVER_TIME,
    CreateMode,
    FileAttributes,
    FileType,
    SetAttributes,
    Stability,
)
from liverecovery.nfs.rpc import (
    AcceptStat,
    AuthStat,
    AuthSys,
    CallRejected,
    RecordReader,
    RecordTooLarge,
    RejectStat,
    RpcError,
    TooManyFragments,
    decode_call,
    decode_reply,
    encode_accepted,
    encode_call,
)
from liverecovery.nfs.xdr import Packer, Unpacker, XdrError

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
names = st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s)


@given(
    st.lists(
        st.one_of(
            u32.map(lambda v: ("u32", v)),
            u64.map(lambda v: ("u64", v)),
            st.binary(max_size=70000).map(lambda v: ("opaque", v)),
            names.map(lambda v: ("string", v)),
        )
    )
)
def test_xdr_round_trip(items: list[tuple[str, object]]) -> None:
    p = Packer()
    for kind, value in items:
        getattr(p, kind)(value)
    data = p.getvalue()
    assert len(data) % 4 == 0 and len(data) == len(p)
    u = Unpacker(data)
    for kind, value in items:
        if kind in ("opaque",):
            assert u.opaque(1 << 20) == value
        elif kind == "string":
            assert u.string(1 << 20) == value
        else:
            assert getattr(u, kind)() == value
    assert u.remaining == 0


def test_xdr_bounds_and_truncation() -> None:
    p = Packer()
    p.opaque(b"x" * 100)
    with pytest.raises(XdrError, match="length 100 > 10"):
        Unpacker(p.getvalue()).opaque(10)
    with pytest.raises(XdrError, match="truncated"):
        Unpacker(p.getvalue()[:50]).opaque(1000)
    with pytest.raises(XdrError, match="truncated"):
        Unpacker(struct.pack(">I", 0xFFFFFFFF)).opaque(2**32)
    with pytest.raises(XdrError, match="bool"):
        Unpacker(struct.pack(">I", 7)).boolean()


@given(
    st.binary(max_size=5000),
    st.lists(st.integers(1, 700), min_size=1, max_size=8),
    st.integers(1, 997),
)
def test_record_reader_reassembles_fragments(body: bytes, cuts: list[int], chunk: int) -> None:
    frags, pos = [], 0
    for c in cuts:
        frags.append(body[pos : pos + c])
        pos += c
    frags.append(body[pos:])
    stream = b"".join(
        struct.pack(">I", len(f) | (0x80000000 if i == len(frags) - 1 else 0)) + f
        for i, f in enumerate(frags)
    )
    stream = stream * 2
    reader = RecordReader(max_record=10000)
    out = []
    for i in range(0, len(stream), chunk):
        reader.feed(stream[i : i + chunk])
        while (r := reader.next_record()) is not None:
            out.append(bytes(r))
    assert out == [body, body]


def test_record_reader_refuses_oversized_record_before_buffering_it() -> None:
    reader = RecordReader(max_record=1000)
    reader.feed(struct.pack(">I", 600) + b"a" * 600)  # first fragment fits
    assert reader.next_record() is None
    reader.feed(struct.pack(">I", 0x80000000 | 600))  # second would exceed the maximum
    with pytest.raises(RecordTooLarge, match="exceeds"):
        reader.next_record()
    huge = RecordReader(max_record=1000)
    huge.feed(struct.pack(">I", 0x80000000 | 0x7FFFFFFF))
    with pytest.raises(RecordTooLarge):
        huge.next_record()


@given(
    u32,
    u32,
    u32,
    u32,
    st.integers(0, 2**32 - 1),
    names.filter(lambda s: len(s.encode()) < 200),
    st.lists(u32, max_size=16),
)
def test_call_round_trip(
    xid: int, prog: int, vers: int, proc: int, uid: int, machine: str, gids: list[int]
) -> None:
    cred = AuthSys(uid=uid, gid=7, gids=tuple(gids), machine_name=machine).encode()
    p = encode_call(xid, prog, vers, proc, cred)
    p.u32(12345)
    call = decode_call(p.getvalue())
    assert (call.xid, call.prog, call.vers, call.proc) == (xid, prog, vers, proc)
    assert AuthSys.decode(call.cred.body).gids == tuple(gids)
    assert call.args.u32() == 12345


def test_call_rejections() -> None:
    p = Packer()
    p.pack_struct(struct.Struct(">IIIIII"), 9, 0, 3, 100003, 3, 0)
    with pytest.raises(CallRejected) as exc:
        decode_call(p.getvalue())
    reply = decode_reply(exc.value.reply)
    assert (reply.xid, reply.accepted, reply.reject_stat, reply.mismatch) == (
        9,
        False,
        RejectStat.RPC_MISMATCH,
        (2, 2),
    )
    gss = encode_call(10, 100003, 3, 0)
    raw = bytearray(gss.getvalue())
    raw[24:28] = struct.pack(">I", 6)  # RPCSEC_GSS credentials
    with pytest.raises(CallRejected) as exc:
        decode_call(bytes(raw))
    reply = decode_reply(exc.value.reply)
    assert reply.reject_stat == RejectStat.AUTH_ERROR and reply.auth_stat == AuthStat.TOOWEAK
    with pytest.raises(RpcError):
        decode_call(b"\0\0\0\1\0\0\0\1")  # a REPLY, not a CALL


def test_accepted_reply_round_trip() -> None:
    for stat in AcceptStat:
        r = decode_reply(encode_accepted(77, stat, (3, 3)).getvalue())
        assert r.accepted and r.accept_stat == stat and r.xid == 77
        assert r.mismatch == ((3, 3) if stat == AcceptStat.PROG_MISMATCH else None)


times = st.integers(0, 2**32 - 1).map(lambda s: s * 1_000_000_000)
fattrs = st.builds(
    FileAttributes,
    type=st.sampled_from(FileType),
    mode=st.integers(0, 0o7777),
    nlink=u32,
    uid=u32,
    gid=u32,
    size=u64,
    used=u64,
    fileid=u64,
    atime_ns=times,
    mtime_ns=times,
    ctime_ns=times,
)
sattrs = st.builds(
    SetAttributes,
    mode=st.none() | st.integers(0, 0o7777),
    uid=st.none() | u32,
    gid=st.none() | u32,
    size=st.none() | u64,
    atime_ns=st.none() | st.just(SERVER_TIME) | times,
    mtime_ns=st.none() | st.just(SERVER_TIME) | times,
)
fhs = st.binary(min_size=1, max_size=64)
wccs = st.builds(n3.Wcc, st.none() | st.builds(n3.WccAttr, u64, times, times), st.none() | fattrs)

ARGS = st.one_of(
    st.builds(n3.FhArgs, fhs),
    st.builds(n3.SetattrArgs, fhs, sattrs, st.none() | times),
    st.builds(n3.DiropArgs, fhs, names),
    st.builds(n3.AccessArgs, fhs, u32),
    st.builds(n3.ReadArgs, fhs, u64, u32),
    st.builds(
        n3.CreateArgs,
        fhs,
        names,
        st.sampled_from([CreateMode.UNCHECKED, CreateMode.GUARDED]),
        sattrs,
    ),
    st.builds(
        n3.CreateArgs,
        fhs,
        names,
        st.just(CreateMode.EXCLUSIVE),
        st.just(SetAttributes()),
        st.binary(min_size=8, max_size=8),
    ),
    st.builds(n3.MkdirArgs, fhs, names, sattrs),
    st.builds(n3.SymlinkArgs, fhs, names, names, sattrs),
    st.builds(n3.RenameArgs, fhs, names, fhs, names),
    st.builds(n3.LinkArgs, fhs, fhs, names),
    st.builds(n3.ReaddirArgs, fhs, u64, st.binary(min_size=8, max_size=8), u32),
    st.builds(n3.ReaddirplusArgs, fhs, u64, st.binary(min_size=8, max_size=8), u32, u32),
    st.builds(n3.CommitArgs, fhs, u64, u32),
)


@given(ARGS)
def test_nfs3_args_round_trip(args: object) -> None:
    p = Packer()
    args.pack(p)  # type: ignore[attr-defined]
    u = Unpacker(p.getvalue())
    assert type(args).unpack(u) == args  # type: ignore[attr-defined]
    assert u.remaining == 0


@given(fhs, u64, st.sampled_from(Stability), st.binary(max_size=5000))
def test_write_args_round_trip(fh: bytes, offset: int, stable: Stability, data: bytes) -> None:
    p = Packer()
    n3.WriteArgs(fh, offset, stable, data).pack(p)
    back = n3.WriteArgs.unpack(Unpacker(p.getvalue()))
    assert (back.fh, back.offset, back.stable, bytes(back.data)) == (fh, offset, stable, data)


ok = st.just(NfsStatus.OK)
RESULTS = st.one_of(
    st.builds(n3.GetattrRes, ok, fattrs),
    st.builds(n3.SetattrRes, st.sampled_from(NfsStatus), wccs),
    st.builds(n3.LookupRes, ok, fhs, st.none() | fattrs, st.none() | fattrs),
    st.builds(n3.AccessRes, ok, st.none() | fattrs, u32),
    st.builds(
        n3.WriteRes, ok, wccs, u32, st.sampled_from(Stability), st.binary(min_size=8, max_size=8)
    ),
    st.builds(n3.CreateRes, ok, st.none() | fhs, st.none() | fattrs, wccs),
    st.builds(n3.RenameRes, st.sampled_from(NfsStatus), wccs, wccs),
    st.builds(
        n3.ReaddirRes,
        ok,
        st.none() | fattrs,
        st.binary(min_size=8, max_size=8),
        st.lists(st.builds(n3.Entry, u64, names, u64), max_size=5),
        st.booleans(),
    ),
    st.builds(
        n3.ReaddirplusRes,
        ok,
        st.none() | fattrs,
        st.binary(min_size=8, max_size=8),
        st.lists(
            st.builds(n3.EntryPlus, u64, names, u64, st.none() | fattrs, st.none() | fhs),
            max_size=5,
        ),
        st.booleans(),
    ),
    st.builds(n3.FsstatRes, ok, st.none() | fattrs, u64, u64, u64, u64, u64, u64, u32),
    st.builds(
        n3.PathconfRes,
        ok,
        st.none() | fattrs,
        u32,
        u32,
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(n3.CommitRes, ok, wccs, st.binary(min_size=8, max_size=8)),
)


@given(RESULTS)
def test_nfs3_results_round_trip(res: object) -> None:
    p = Packer()
    res.pack(p, 42)  # type: ignore[attr-defined]
    u = Unpacker(p.getvalue())
    assert type(res).unpack(u) == res  # type: ignore[attr-defined]
    assert u.remaining == 0


def test_readdir_entry_sizes_match_encoding() -> None:
    e = n3.Entry(5, "hello.txt", 99)
    p = Packer()
    n3.ReaddirRes(NfsStatus.OK, None, b"\0" * 8, [e], True).pack(p, 1)
    empty = Packer()
    n3.ReaddirRes(NfsStatus.OK, None, b"\0" * 8, [], True).pack(empty, 1)
    assert len(p) - len(empty) == e.wire_size()


@given(
    st.lists(st.binary(max_size=200_000), min_size=1, max_size=4),
    st.integers(1, 100_000),
    st.booleans(),
)
def test_record_reader_buffer_api_matches_feed(
    bodies: list[bytes], chunk: int, use_feed: bool
) -> None:
    stream = b"".join(struct.pack(">I", 0x80000000 | len(b)) + b for b in bodies)
    reader = RecordReader(max_record=1 << 20)
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        if use_feed:
            reader.feed(stream[pos : pos + chunk])
            pos += chunk
        else:
            target = reader.get_buffer()
            n = min(len(target), chunk, len(stream) - pos)
            target[:n] = stream[pos : pos + n]
            reader.buffer_updated(n)
            pos += n
        while (r := reader.next_record()) is not None:
            out.append(bytes(r))
    assert out == bodies


LAST = 0x80000000


def _socket_reads(reader: RecordReader, stream: bytes, chunk: int) -> list[bytes]:
    """Deliver ``stream`` as a socket would (``get_buffer``/``buffer_updated``)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        target = reader.get_buffer()
        n = min(len(target), chunk, len(stream) - pos)
        target[:n] = stream[pos : pos + n]
        del target
        reader.buffer_updated(n)
        pos += n
        while (r := reader.next_record()) is not None:
            out.append(bytes(r))
    return out


@given(st.integers(1, 1 << 20), st.integers(1, 200_000), st.booleans())
def test_an_untrusted_peer_costs_what_it_sent_not_what_it_announced(
    announced: int, sent: int, eager: bool
) -> None:
    """Without ``eager``, the memory a record in progress holds is at most about twice the
    bytes received (the header's announced size does not matter); with it, the fragment's
    whole buffer is allocated when its header arrives."""
    sent = min(sent, announced - 1) if announced > 1 else 0
    reader = RecordReader(max_record=2 << 20, eager=eager)
    assert _socket_reads(reader, struct.pack(">I", LAST | announced) + b"z" * sent, 70_000) == []
    received = sent + 4
    if eager and announced >= 64 * 1024:
        assert reader.held == announced
    if not eager:
        assert reader.held <= max(2 * received, 64 * 1024 + 4)


@given(st.lists(st.binary(max_size=300_000), min_size=1, max_size=3), st.integers(1, 100_000))
def test_growing_buffers_reassemble_records_exactly(bodies: list[bytes], chunk: int) -> None:
    stream = b"".join(struct.pack(">I", LAST | len(b)) + b for b in bodies)
    assert _socket_reads(RecordReader(1 << 20, eager=False), stream, chunk) == bodies


def test_empty_fragments_count_against_the_fragment_cap() -> None:
    reader = RecordReader(max_record=1 << 20, max_fragments=16)
    reader.feed(struct.pack(">I", 0) * 16)  # 16 empty fragments: allowed
    assert reader.next_record() is None and reader.pending
    reader.feed(struct.pack(">I", 0))
    with pytest.raises(TooManyFragments, match="more than 16 fragments"):
        reader.next_record()
    ok = RecordReader(max_record=1 << 20, max_fragments=16)
    ok.feed(struct.pack(">I", 0) * 15 + struct.pack(">I", LAST | 2) + b"ok")
    assert ok.next_record() == b"ok" and not ok.pending
