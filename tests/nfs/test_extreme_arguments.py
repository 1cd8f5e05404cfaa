"""Every NFSv3 procedure with well-formed but extreme arguments, over a real connection.

Offsets and sizes at and past 2^63, counts of 0 and 2^32 - 1, names and symlink targets with
NUL, ``/``, non-UTF-8 bytes or 255+ bytes, extreme modes, owners, times and cookies: each call
gets an accepted reply whose status is one of RFC 1813's and never SERVERFAULT (RPC SYSTEM_ERR
never), nothing is logged at ERROR (no traceback), and the server still answers afterwards.
Served by a ``LocalFilesystem`` and by a ``MemoryFilesystem`` export.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator

import attrs
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.errors import NfsStatus
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs.filesystem import CreateMode, FileType, SetAttributes, Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.rpc import AcceptStat, AuthSys, RecordReader, decode_reply, encode_call
from liverecovery.nfs.server import NfsServer

pytestmark = pytest.mark.timeout(300)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@attrs.frozen
class Live:
    port: int
    handles: tuple[bytes, ...]
    """Roots, files, directories and symlinks of both exports."""
    roots: tuple[bytes, bytes]
    kept: tuple[bytes, bytes]
    """A file in each export that the random calls do not name (they may remove the others)."""
    errors: _Errors


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("extreme")
    data = tmp / "data"
    (data / "dir").mkdir(parents=True)
    (data / "file").write_bytes(b"x" * 10_000)
    (data / "link").symlink_to("file")
    (data / KEPT).write_bytes(b"kept")
    errors = _Errors()
    logging.getLogger("liverecovery").addHandler(errors)
    try:
        with start_blocking_portal("asyncio") as portal:
            server = NfsServer(tmp / "state")
            portal.call(server.start)
            local = LocalFilesystem(data)
            memory = MemoryFilesystem()
            portal.call(server.export_filesystem, "/local", local, ["127.0.0.1"])
            portal.call(server.export_filesystem, "/memory", memory, ["127.0.0.1"])
            handles: list[bytes] = []
            for path, names in (("/local", ("file", "dir", "link")), ("/memory", ())):
                exp = server.registry.get(path)
                assert exp is not None
                handles.append(server.registry.handle(exp, exp.fs.root_id))
                for name in names:
                    fid = portal.call(exp.fs.lookup, exp.fs.root_id, name)
                    handles.append(server.registry.handle(exp, fid))
            mem = server.registry.get("/memory")
            assert mem is not None
            fid = portal.call(
                lambda: memory.create(memory.root_id, "file", SetAttributes(size=100))
            )
            handles.append(server.registry.handle(mem, fid))
            kept_fid = portal.call(
                lambda: memory.create(memory.root_id, KEPT, SetAttributes(size=4))
            )
            local_exp = server.registry.get("/local")
            assert local_exp is not None
            local_kept = portal.call(local.lookup, local.root_id, KEPT)
            yield Live(
                server.port,
                tuple(handles),
                (handles[0], handles[4]),
                (
                    server.registry.handle(local_exp, local_kept),
                    server.registry.handle(mem, kept_fid),
                ),
                errors,
            )
            portal.call(server.aclose)
            portal.call(local.aclose)
    finally:
        logging.getLogger("liverecovery").removeHandler(errors)


KEPT = "kept-5b1e0c"
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
offsets = st.one_of(
    st.sampled_from([0, 1, 10_000, 1 << 31, 1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63, U64]),
    st.integers(0, U64),
)
counts = st.one_of(
    st.sampled_from([0, 1, 4096, 1 << 20, (1 << 20) + 1, 1 << 31, U32]), st.integers(0, U32)
)
u32s = st.one_of(st.sampled_from([0, 1, 0o7777, 0o170000, 1 << 31, U32]), st.integers(0, U32))
names = st.one_of(
    st.sampled_from(["", ".", "..", "a/b", "/", "a\0b", "\0", "x" * 255, "x" * 256, "new", "file"]),
    st.text(max_size=30),
    st.binary(max_size=30).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
targets = st.one_of(
    st.sampled_from(["", "\0", "a\0b", "/etc/passwd", "../../..", "x" * 1025, "x" * 4096]),
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
times = st.one_of(
    st.none(),
    st.builds(
        lambda s, ns: s * 1_000_000_000 + ns, st.integers(0, U32), st.integers(0, 999_999_999)
    ),
)
sattrs = st.builds(
    SetAttributes,
    mode=st.none() | u32s,
    uid=st.none() | u32s,
    gid=st.none() | u32s,
    size=st.none() | offsets,
    atime_ns=times,
    mtime_ns=times,
)
verifiers = st.binary(min_size=8, max_size=8)
stabilities = st.sampled_from(list(Stability))


@st.composite
def calls(draw: st.DrawFn, handles: tuple[bytes, ...]) -> tuple[int, object]:
    fh = st.sampled_from(handles)
    P = n3.Proc
    proc = draw(st.sampled_from([p for p in P if p != P.NULL]))
    args: object
    if proc in (P.GETATTR, P.READLINK, P.FSSTAT, P.FSINFO, P.PATHCONF):
        args = n3.FhArgs(draw(fh))
    elif proc == P.SETATTR:
        args = n3.SetattrArgs(draw(fh), draw(sattrs), draw(st.none() | times))
    elif proc in (P.LOOKUP, P.REMOVE, P.RMDIR):
        args = n3.DiropArgs(draw(fh), draw(names))
    elif proc == P.ACCESS:
        args = n3.AccessArgs(draw(fh), draw(u32s))
    elif proc == P.READ:
        args = n3.ReadArgs(draw(fh), draw(offsets), draw(counts))
    elif proc == P.WRITE:
        args = n3.WriteArgs(
            draw(fh), draw(offsets), draw(stabilities), draw(st.binary(max_size=64))
        )
    elif proc == P.CREATE:
        mode = draw(st.sampled_from(list(CreateMode)))
        if mode == CreateMode.EXCLUSIVE:
            args = n3.CreateArgs(draw(fh), draw(names), mode, verifier=draw(verifiers))
        else:
            args = n3.CreateArgs(draw(fh), draw(names), mode, draw(sattrs))
    elif proc == P.MKDIR:
        args = n3.MkdirArgs(draw(fh), draw(names), draw(sattrs))
    elif proc == P.SYMLINK:
        args = n3.SymlinkArgs(draw(fh), draw(names), draw(targets), draw(sattrs))
    elif proc == P.MKNOD:
        kind = draw(st.sampled_from(list(FileType)))
        args = n3.MknodArgs(draw(fh), draw(names), kind, draw(sattrs), (draw(u32s), draw(u32s)))
    elif proc == P.RENAME:
        args = n3.RenameArgs(draw(fh), draw(names), draw(fh), draw(names))
    elif proc == P.LINK:
        args = n3.LinkArgs(draw(fh), draw(fh), draw(names))
    elif proc == P.READDIR:
        args = n3.ReaddirArgs(draw(fh), draw(offsets), draw(verifiers), draw(counts))
    elif proc == P.READDIRPLUS:
        args = n3.ReaddirplusArgs(
            draw(fh), draw(offsets), draw(verifiers), draw(counts), draw(counts)
        )
    else:
        assert proc == P.COMMIT
        args = n3.CommitArgs(draw(fh), draw(offsets), draw(counts))
    return int(proc), args


class _Conn:
    """One connection for the whole test: a call, its reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.reader = RecordReader(4 << 20)
        self.xid = 0

    def call(self, proc: int, args: object) -> tuple[AcceptStat | None, int | None]:
        self.xid += 1
        p = encode_call(self.xid, n3.NFS_PROGRAM, 3, proc, AuthSys(machine_name="x").encode())
        args.pack(p)  # type: ignore[attr-defined]
        body = p.getvalue()
        self.sock.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
        while (record := self.reader.next_record()) is None:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the server closed the connection"
            self.reader.feed(chunk)
        reply = decode_reply(record)
        assert reply.xid == self.xid and reply.accepted
        status = (
            reply.results.u32() if reply.results is not None and reply.accept_stat == 0 else None
        )
        return reply.accept_stat, status


@pytest.fixture(scope="module")
def conn(live: Live) -> Iterator[_Conn]:
    c = _Conn(live.port)
    yield c
    c.sock.close()


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_extreme_arguments_get_an_nfs_status(live: Live, conn: _Conn, data: st.DataObject) -> None:
    proc, args = data.draw(calls(live.handles))
    accept, status = conn.call(proc, args)
    assert accept == AcceptStat.SUCCESS, (proc, args)
    assert status is not None and status in set(NfsStatus), (proc, args, status)
    assert status != NfsStatus.SERVERFAULT, (proc, args)
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]
    # The server still answers an allowed client.
    assert conn.call(n3.Proc.GETATTR, n3.FhArgs(live.handles[0])) == (AcceptStat.SUCCESS, 0)


@pytest.mark.parametrize(
    ("proc", "make", "expected"),
    [
        ("WRITE", lambda fh: n3.WriteArgs(fh, 1 << 63, Stability.FILE_SYNC, b"x"), NfsStatus.FBIG),
        (
            "WRITE",
            lambda fh: n3.WriteArgs(fh, (1 << 63) - 1, Stability.UNSTABLE, b"xy"),
            NfsStatus.FBIG,
        ),
        ("WRITE", lambda fh: n3.WriteArgs(fh, U64, Stability.UNSTABLE, b"x"), NfsStatus.FBIG),
        ("SETATTR", lambda fh: n3.SetattrArgs(fh, SetAttributes(size=1 << 63)), NfsStatus.FBIG),
        ("SETATTR", lambda fh: n3.SetattrArgs(fh, SetAttributes(size=U64)), NfsStatus.FBIG),
        ("READ", lambda fh: n3.ReadArgs(fh, 1 << 63, 4096), NfsStatus.OK),
        ("READ", lambda fh: n3.ReadArgs(fh, U64, 0), NfsStatus.OK),
        ("COMMIT", lambda fh: n3.CommitArgs(fh, U64, 10), NfsStatus.INVAL),
    ],
)
def test_out_of_range_offsets_and_sizes(
    live: Live, conn: _Conn, proc: str, make: object, expected: NfsStatus
) -> None:
    """The cases that used to crash their handlers (SYSTEM_ERR plus a traceback)."""
    for fh in live.kept:
        assert conn.call(int(n3.Proc[proc]), make(fh)) == (AcceptStat.SUCCESS, expected)  # type: ignore[operator]
    assert not live.errors.records


@pytest.mark.parametrize("target", ["a\0b", "\0", ""])
def test_a_symlink_target_with_nul_or_empty_is_inval(live: Live, conn: _Conn, target: str) -> None:
    for root in live.roots:
        args = n3.SymlinkArgs(root, "bad-link", target)
        assert conn.call(n3.Proc.SYMLINK, args) == (AcceptStat.SUCCESS, NfsStatus.INVAL)
    assert not live.errors.records


def test_a_name_with_nul_is_acces(live: Live, conn: _Conn) -> None:
    for root in live.roots:
        for proc, args in (
            (n3.Proc.CREATE, n3.CreateArgs(root, "a\0b", attributes=SetAttributes())),
            (n3.Proc.MKDIR, n3.MkdirArgs(root, "a\0b")),
            (n3.Proc.SYMLINK, n3.SymlinkArgs(root, "a\0b", "file")),
            (n3.Proc.LOOKUP, n3.DiropArgs(root, "a\0b")),
        ):
            assert conn.call(proc, args) == (AcceptStat.SUCCESS, NfsStatus.ACCES), proc


def test_readdir_with_a_tiny_count_is_toosmall(live: Live, conn: _Conn) -> None:
    for root in live.roots:
        for count in (0, 1, 16):
            got = conn.call(n3.Proc.READDIR, n3.ReaddirArgs(root, 0, b"\0" * 8, count))
            assert got == (AcceptStat.SUCCESS, NfsStatus.TOOSMALL)
            got = conn.call(
                n3.Proc.READDIRPLUS, n3.ReaddirplusArgs(root, 0, b"\0" * 8, count, count)
            )
            assert got == (AcceptStat.SUCCESS, NfsStatus.TOOSMALL)
