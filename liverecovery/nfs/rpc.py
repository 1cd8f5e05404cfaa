"""ONC RPC v2 (RFC 5531) messages and TCP record marking: pure codecs, no sockets.

``decode_call``/``encode_reply`` serve the server, ``encode_call``/``decode_reply`` the client.
``RecordReader`` turns a byte stream into records (multi-fragment, bounded by a maximum record
size) and ``record_header`` frames a reply as one fragment.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import attrs

from liverecovery.nfs.xdr import Buffer, Packer, Unpacker, XdrError

__all__ = [
    "DEFAULT_MAX_FRAGMENTS",
    "AcceptStat",
    "AuthFlavor",
    "AuthStat",
    "AuthSys",
    "Call",
    "CallRejected",
    "OpaqueAuth",
    "RecordReader",
    "RecordTooLarge",
    "RejectStat",
    "Reply",
    "RpcError",
    "TooManyFragments",
    "decode_call",
    "decode_reply",
    "encode_accepted",
    "encode_call",
    "encode_rejected",
    "record_header",
    "scratch_buffer",
]

RPC_VERSION: Final = 2
MAX_AUTH_BYTES: Final = 400
LAST_FRAGMENT: Final = 0x80000000
_SCRATCH: Final = 64 * 1024
DEFAULT_MAX_FRAGMENTS: Final = 1024
"""Fragments one record may have: clients send one (Linux, libnfs) or a few KiB each (libtirpc
splits at about 4 KB, so 1024 covers a 1 MiB WRITE from it); empty fragments count."""
_HDR: Final = struct.Struct(">I")
_CALL_HEAD: Final = struct.Struct(">IIIIII")  # xid, CALL, rpcvers, prog, vers, proc
_REPLY_OK_HEAD: Final = struct.Struct(">IIIIII")  # xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, stat
_AUTH_HEAD: Final = struct.Struct(">II")  # flavor, body length
_CALL_HEAD_AUTH: Final = struct.Struct(">IIIIIIII")  # the call head, then the credentials' head
_VALID_SYS_CREDS: dict[bytes, OpaqueAuth] = {}
"""AUTH_SYS bodies that decoded, and their credentials: a client sends the same ones on every
call (one object for them all, not one per call)."""
_VALID_SYS_CREDS_MAX: Final = 1024


class AuthFlavor(enum.IntEnum):
    NONE = 0
    SYS = 1
    SHORT = 2
    DH = 3
    RPCSEC_GSS = 6


class AcceptStat(enum.IntEnum):
    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(enum.IntEnum):
    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(enum.IntEnum):
    OK = 0
    BADCRED = 1
    REJECTEDCRED = 2
    BADVERF = 3
    REJECTEDVERF = 4
    TOOWEAK = 5


class RpcError(Exception):
    """A malformed RPC message (the peer's fault)."""


class RecordTooLarge(RpcError):
    """A record exceeds the maximum record size; the connection must be closed."""


class TooManyFragments(RecordTooLarge):
    """A record has more fragments than allowed (empty ones count); close the connection."""


@attrs.frozen
class OpaqueAuth:
    flavor: int
    body: bytes = b""


AUTH_NONE: Final = OpaqueAuth(AuthFlavor.NONE)


@attrs.frozen
class AuthSys:
    """AUTH_SYS credentials (RFC 5531 appendix A)."""

    uid: int = 0
    gid: int = 0
    gids: tuple[int, ...] = ()
    machine_name: str = ""
    stamp: int = 0

    def encode(self) -> OpaqueAuth:
        p = Packer()
        p.u32(self.stamp)
        p.string(self.machine_name)
        p.u32(self.uid)
        p.u32(self.gid)
        p.u32(len(self.gids))
        for g in self.gids:
            p.u32(g)
        return OpaqueAuth(AuthFlavor.SYS, p.getvalue())

    @classmethod
    def decode(cls, body: bytes) -> AuthSys:
        u = Unpacker(body)
        stamp = u.u32()
        name = u.string(255)
        uid, gid = u.u32(), u.u32()
        gids = tuple(u.u32() for _ in range(u.array_length(16)))
        return cls(uid=uid, gid=gid, gids=gids, machine_name=name, stamp=stamp)


@attrs.frozen
class Call:
    """A call header; ``args`` is positioned at the procedure's arguments."""

    xid: int
    prog: int
    vers: int
    proc: int
    cred: OpaqueAuth
    verf: OpaqueAuth
    args: Unpacker = attrs.field(eq=False, repr=False)


class CallRejected(RpcError):
    """A call to refuse at the RPC level; ``reply`` is the encoded rejection to send."""

    def __init__(self, message: str, xid: int, reply: bytes) -> None:
        super().__init__(message)
        self.xid = xid
        self.reply = reply


def _auth(u: Unpacker) -> OpaqueAuth:
    flavor, n = u.unpack_struct(_AUTH_HEAD)
    if n == 0 and flavor == AuthFlavor.NONE:
        return AUTH_NONE  # (every verifier a client sends)
    if n > MAX_AUTH_BYTES:
        raise XdrError(f"opaque at byte {u.position - 4} has length {n} > {MAX_AUTH_BYTES}")
    body = bytes(u.fixed_view(n))
    if flavor == AuthFlavor.SYS:
        known = _VALID_SYS_CREDS.get(body)
        if known is not None:
            return known
    return OpaqueAuth(flavor, body)


def _known_call(record: Buffer) -> Call | None:
    """The call header of an RPC v2 call with credentials seen before (or none) and no verifier,
    which is every call of a mounted client, in three ``unpack_from``; None for anything else
    (``decode_call`` then parses it field by field, with its errors)."""
    if len(record) < _CALL_HEAD_AUTH.size + _AUTH_HEAD.size:
        return None
    xid, mtype, rpcvers, prog, vers, proc, flavor, n = _CALL_HEAD_AUTH.unpack_from(record)
    if mtype != 0 or rpcvers != RPC_VERSION or n > MAX_AUTH_BYTES:
        return None
    end = _CALL_HEAD_AUTH.size + n
    verf_at = end + (-n & 3)
    if len(record) < verf_at + _AUTH_HEAD.size:
        return None
    if _AUTH_HEAD.unpack_from(record, verf_at) != (AuthFlavor.NONE, 0):
        return None
    if flavor == AuthFlavor.SYS:
        cred = _VALID_SYS_CREDS.get(bytes(record[_CALL_HEAD_AUTH.size : end]))
        if cred is None:
            return None
    elif flavor != AuthFlavor.NONE or n:
        return None
    else:
        cred = AUTH_NONE
    return Call(xid, prog, vers, proc, cred, AUTH_NONE, Unpacker(record, verf_at + _AUTH_HEAD.size))


def decode_call(record: Buffer) -> Call:
    """Parse a call header.

    :raises CallRejected: wrong RPC version (RPC_MISMATCH) or bad credentials (AUTH_ERROR).
    :raises RpcError: not a call, or too short to hold a header (nothing can be answered).
    """
    known = _known_call(record)
    if known is not None:
        return known
    u = Unpacker(record)
    try:
        xid, mtype, rpcvers, prog, vers, proc = u.unpack_struct(_CALL_HEAD)
    except XdrError as exc:
        raise RpcError(f"call header: {exc}") from None
    if mtype != 0:
        raise RpcError(f"xid {xid:#x}: message type {mtype} is not CALL")
    if rpcvers != RPC_VERSION:
        raise CallRejected(f"xid {xid:#x}: RPC version {rpcvers}", xid, encode_rpc_mismatch(xid))
    try:
        cred = _auth(u)
        verf = _auth(u)
    except XdrError as exc:
        raise CallRejected(
            f"xid {xid:#x}: credentials: {exc}", xid, encode_auth_error(xid, AuthStat.BADCRED)
        ) from None
    if cred.flavor not in (AuthFlavor.NONE, AuthFlavor.SYS):
        stat = AuthStat.TOOWEAK if cred.flavor == AuthFlavor.RPCSEC_GSS else AuthStat.BADCRED
        raise CallRejected(
            f"xid {xid:#x}: auth flavor {cred.flavor}", xid, encode_auth_error(xid, stat)
        )
    if cred.flavor == AuthFlavor.SYS and cred.body not in _VALID_SYS_CREDS:
        try:
            AuthSys.decode(cred.body)
        except XdrError as exc:
            raise CallRejected(
                f"xid {xid:#x}: AUTH_SYS: {exc}", xid, encode_auth_error(xid, AuthStat.BADCRED)
            ) from None
        if len(_VALID_SYS_CREDS) >= _VALID_SYS_CREDS_MAX:
            _VALID_SYS_CREDS.clear()
        _VALID_SYS_CREDS[cred.body] = cred
    return Call(xid, prog, vers, proc, cred, verf, u)


def encode_accepted(
    xid: int, stat: AcceptStat = AcceptStat.SUCCESS, mismatch: tuple[int, int] | None = None
) -> Packer:
    """The accepted-reply header (AUTH_NONE verifier); append SUCCESS results to the packer."""
    p = Packer()
    p.pack_struct(_REPLY_OK_HEAD, xid, 1, 0, 0, 0, stat)
    if stat == AcceptStat.PROG_MISMATCH:
        low, high = mismatch or (0, 0)
        p.u32(low)
        p.u32(high)
    return p


def encode_rejected(xid: int, stat: RejectStat, detail: int, high: int = 0) -> bytes:
    p = Packer()
    p.u32(xid)
    p.u32(1)
    p.u32(1)
    p.u32(stat)
    if stat == RejectStat.RPC_MISMATCH:
        p.u32(detail)
        p.u32(high)
    else:
        p.u32(detail)
    return p.getvalue()


def encode_rpc_mismatch(xid: int) -> bytes:
    return encode_rejected(xid, RejectStat.RPC_MISMATCH, RPC_VERSION, RPC_VERSION)


def encode_auth_error(xid: int, stat: AuthStat) -> bytes:
    return encode_rejected(xid, RejectStat.AUTH_ERROR, stat)


def encode_call(
    xid: int,
    prog: int,
    vers: int,
    proc: int,
    cred: OpaqueAuth = AUTH_NONE,
    verf: OpaqueAuth = AUTH_NONE,
) -> Packer:
    """A call header; append the procedure's arguments to the returned packer."""
    p = Packer()
    p.pack_struct(_CALL_HEAD, xid, 0, RPC_VERSION, prog, vers, proc)
    for auth in (cred, verf):
        p.u32(auth.flavor)
        p.opaque(auth.body)
    return p


@attrs.frozen
class Reply:
    """A decoded reply; ``results`` is positioned at the results when ``accept_stat`` is SUCCESS."""

    xid: int
    accepted: bool
    accept_stat: AcceptStat | None = None
    reject_stat: RejectStat | None = None
    auth_stat: AuthStat | None = None
    mismatch: tuple[int, int] | None = None
    results: Unpacker | None = attrs.field(default=None, eq=False, repr=False)


def reply_xid(record: Buffer) -> int:
    """The xid of a record (for routing before full decoding). :raises RpcError:"""
    if len(record) < 4:
        raise RpcError("record shorter than an xid")
    return int(_HDR.unpack_from(record, 0)[0])


def decode_reply(record: Buffer) -> Reply:
    """:raises RpcError: not a well-formed reply."""
    u = Unpacker(record)
    try:
        xid, mtype = u.u32(), u.u32()
        if mtype != 1:
            raise RpcError(f"xid {xid:#x}: message type {mtype} is not REPLY")
        if u.u32() == 0:
            _auth(u)
            stat = AcceptStat(u.u32())
            mismatch = (u.u32(), u.u32()) if stat == AcceptStat.PROG_MISMATCH else None
            return Reply(xid, True, accept_stat=stat, mismatch=mismatch, results=u)
        rstat = RejectStat(u.u32())
        if rstat == RejectStat.RPC_MISMATCH:
            return Reply(xid, False, reject_stat=rstat, mismatch=(u.u32(), u.u32()))
        return Reply(xid, False, reject_stat=rstat, auth_stat=AuthStat(u.u32()))
    except (XdrError, ValueError) as exc:
        if isinstance(exc, RpcError):
            raise
        raise RpcError(f"malformed reply: {exc}") from None


def scratch_buffer() -> memoryview:
    """A landing buffer for socket reads, which the ``RecordReader`` objects of one event loop
    may share (``scratch=``): each read is appended elsewhere before the next one."""
    return memoryview(bytearray(_SCRATCH))


def record_header(length: int) -> bytes:
    """The record mark of a single-fragment record of ``length`` bytes."""
    return _HDR.pack(LAST_FRAGMENT | length)


class RecordReader:
    """Reassembles records from stream bytes (RFC 5531 section 11).

    Feed it what the socket gives (``feed``), or let the socket read straight into it
    (``get_buffer``/``buffer_updated``, for ``asyncio.BufferedProtocol``): a large fragment is
    then received into its own buffer, which becomes the record without another copy.
    ``next_record`` returns complete records.

    Buffering is bounded by what the peer actually sent, not by what its headers announce: a
    record whose fragments add up to more than ``max_record`` raises ``RecordTooLarge`` as soon
    as a header says so, before its body is read; a record of more than ``max_fragments``
    fragments (empty ones count) raises ``TooManyFragments``. Unless ``eager``, bytes gather as
    they come and a large fragment's own buffer starts at twice what has arrived, doubling as
    it fills, so a header alone costs nothing; ``eager`` (a peer that has shown it is a client) allocates the whole
    fragment at once, which saves the copies of the doublings on the WRITE path.
    """

    __slots__ = (
        "_buf",
        "_direct",
        "_direct_got",
        "_direct_last",
        "_direct_len",
        "_fragments",
        "_fragments_size",
        "_ready",
        "_scratch",
        "eager",
        "max_fragments",
        "max_record",
    )

    def __init__(
        self,
        max_record: int,
        *,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
        eager: bool = True,
        scratch: memoryview | None = None,
    ) -> None:
        self.max_record = max_record
        self.max_fragments = max_fragments
        self.eager = eager
        """Allocate a large fragment's whole buffer when its header arrives."""
        self._buf = bytearray()
        self._fragments: list[bytes | bytearray] = []
        self._fragments_size = 0
        self._scratch = scratch if scratch is not None else memoryview(bytearray(_SCRATCH))
        """Where socket reads land before they are appended (may be shared by the readers of
        one event loop: ``buffer_updated`` empties it right after each read)."""
        self._direct: bytearray | None = None
        self._direct_got = 0
        self._direct_len = 0
        self._direct_last = False
        self._ready: list[bytes | bytearray] = []

    def feed(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while self._direct is not None and view:
            target = self.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            del target
            self.buffer_updated(n)
            view = view[n:]
        if view:
            self._buf += view

    def get_buffer(self) -> memoryview:
        """Where the next socket read should land (then call ``buffer_updated``)."""
        direct = self._direct
        if direct is None:
            return self._scratch
        got = self._direct_got
        if got == len(direct):  # filled what was allocated so far: double it
            grown = bytearray(min(self._direct_len, 2 * len(direct)))
            grown[:got] = direct
            self._direct = direct = grown
        return memoryview(direct)[got:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is None:
            self._buf += self._scratch[:nbytes]
            return
        self._direct_got += nbytes
        if self._direct_got == self._direct_len:
            self._add_fragment(self._direct, self._direct_last)
            self._direct = None

    @property
    def buffered(self) -> int:
        """Bytes received and kept (not yet returned by ``next_record``)."""
        direct = self._direct_got if self._direct is not None else 0
        return len(self._buf) + self._fragments_size + direct

    @property
    def held(self) -> int:
        """Bytes of memory the record in progress holds (allocated, received or not)."""
        direct = len(self._direct) if self._direct is not None else 0
        return len(self._buf) + self._fragments_size + direct

    @property
    def pending(self) -> bool:
        """A record has begun and is not complete."""
        return bool(self._buf) or bool(self._fragments) or self._direct is not None

    def _add_fragment(self, fragment: bytes | bytearray, last: bool) -> None:
        if last and not self._fragments:
            self._ready.append(fragment)
            return
        self._fragments.append(fragment)
        self._fragments_size += len(fragment)
        if last:
            self._ready.append(b"".join(self._fragments))
            self._fragments.clear()
            self._fragments_size = 0

    def next_record(self) -> bytes | bytearray | None:
        """The next complete record, or None until more bytes arrive.

        :raises RecordTooLarge: the record exceeds ``max_record`` or ``max_fragments``.
        """
        while True:
            if self._ready:
                return self._ready.pop(0)
            buf = self._buf
            if len(buf) < 4 or self._direct is not None:
                return None
            (mark,) = _HDR.unpack_from(buf, 0)
            length = mark & 0x7FFFFFFF
            if self._fragments_size + length > self.max_record:
                raise RecordTooLarge(
                    f"record of at least {self._fragments_size + length} bytes exceeds "
                    f"the maximum of {self.max_record}"
                )
            if len(self._fragments) >= self.max_fragments:
                raise TooManyFragments(
                    f"record of more than {self.max_fragments} fragments "
                    f"({self._fragments_size} bytes)"
                )
            last = bool(mark & LAST_FRAGMENT)
            if len(buf) < 4 + length:
                have = len(buf) - 4
                if length >= _SCRATCH and (self.eager or have >= _SCRATCH):
                    # Receive the rest straight into the fragment's buffer: all of it at once
                    # for a trusted peer, else twice what came so far (doubling as it fills).
                    size = length if self.eager else min(length, 2 * have)
                    fragment = bytearray(size)
                    fragment[:have] = memoryview(buf)[4:]
                    self._buf = bytearray()
                    self._direct, self._direct_got, self._direct_last = fragment, have, last
                    self._direct_len = length
                return None
            if len(buf) == 4 + length:
                self._buf = bytearray()
                del buf[:4]
                self._add_fragment(buf, last)
            else:
                self._add_fragment(bytes(memoryview(buf)[4 : 4 + length]), last)
                del buf[: 4 + length]
