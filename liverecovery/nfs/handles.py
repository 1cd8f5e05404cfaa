"""NFS file handles: export id + generation + file id, authenticated with an HMAC.

The key lives in the server's state directory (created owner-only), so handles survive a server
restart and cannot be forged or pointed at another file: a handle whose MAC does not verify is
NFS3ERR_BADHANDLE; a genuine handle of an export that is gone, or of an older generation of it,
is NFS3ERR_STALE (the server decides that, this module only authenticates).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from pathlib import Path
from typing import Final

import attrs

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.io.private_dirs import make_private_dirs

__all__ = ["FileHandle", "HandleCodec", "load_or_create_key"]

_VERSION: Final = 1
_BODY: Final = struct.Struct(">BxxxIIQ")
_MAC_LEN: Final = 16
HANDLE_SIZE: Final = _BODY.size + _MAC_LEN
KEY_FILE: Final = "handle-key"
_VERIFIED_MAX: Final = 4096


@attrs.frozen
class FileHandle:
    export_id: int
    generation: int
    fileid: int


def load_or_create_key(state_dir: Path) -> bytes:
    """The 32-byte handle key of ``state_dir``, created (mode 0600, dir 0700) on first use."""
    make_private_dirs(state_dir)
    path = state_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        tmp = state_dir / f".{KEY_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process created meanwhile
        except FileExistsError:
            key = path.read_bytes()
        finally:
            tmp.unlink()
    if len(key) != 32:
        raise ValueError(f"{path}: handle key must be 32 bytes, found {len(key)}")
    return key


class HandleCodec:
    """Encodes and authenticates file handles with one key.

    Every NFS call presents a handle; the handles a client uses are few and a genuine handle's
    MAC never changes, so handles that verified are remembered (a bounded dict keyed by the
    exact handle bytes) and skip the HMAC next time. A forged handle is never remembered.
    """

    __slots__ = ("_key", "_verified")

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("handle key must be at least 16 bytes")
        self._key = key
        self._verified: dict[bytes, FileHandle] = {}

    def encode(self, export_id: int, generation: int, fileid: int) -> bytes:
        body = _BODY.pack(_VERSION, export_id, generation, fileid)
        return body + hmac.digest(self._key, body, hashlib.sha256)[:_MAC_LEN]

    def decode(self, fh: bytes) -> FileHandle:
        """:raises NfsError: BADHANDLE when the handle is malformed or its MAC does not verify."""
        known = self._verified.get(fh)
        if known is not None:
            return known
        if len(fh) != HANDLE_SIZE:
            raise NfsError(NfsStatus.BADHANDLE, f"handle of {len(fh)} bytes")
        body = fh[: _BODY.size]
        mac = hmac.digest(self._key, body, hashlib.sha256)[:_MAC_LEN]
        if not hmac.compare_digest(mac, fh[_BODY.size :]):
            raise NfsError(NfsStatus.BADHANDLE, "handle does not authenticate")
        version, export_id, generation, fileid = _BODY.unpack(body)
        if version != _VERSION:
            raise NfsError(NfsStatus.BADHANDLE, f"handle version {version}")
        handle = FileHandle(export_id, generation, fileid)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[bytes(fh)] = handle
        return handle
