"""PORTMAP v2 (RFC 1833 section 3) messages: pure XDR codecs."""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Final

import attrs

from liverecovery.nfs.xdr import Packer, Unpacker, XdrError

__all__ = ["IPPROTO_TCP", "IPPROTO_UDP", "Mapping", "PMAP_PROGRAM", "PMAP_VERSION", "PmapProc"]

PMAP_PROGRAM: Final = 100000
PMAP_VERSION: Final = 2
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
_MAPPING: Final = struct.Struct(">IIII")
_LIST_BOUND: Final = 100_000


class PmapProc(enum.IntEnum):
    NULL = 0
    SET = 1
    UNSET = 2
    GETPORT = 3
    DUMP = 4
    CALLIT = 5


@attrs.frozen
class Mapping:
    prog: int
    vers: int
    prot: int
    port: int

    def pack(self, p: Packer) -> None:
        p.pack_struct(_MAPPING, self.prog, self.vers, self.prot, self.port)

    @classmethod
    def unpack(cls, u: Unpacker) -> Mapping:
        return cls(*u.unpack_struct(_MAPPING))


def pack_mapping_list(p: Packer, mappings: Sequence[Mapping]) -> None:
    for m in mappings:
        p.u32(1)
        m.pack(p)
    p.u32(0)


def unpack_mapping_list(u: Unpacker) -> list[Mapping]:
    out: list[Mapping] = []
    while u.boolean():
        if len(out) >= _LIST_BOUND:
            raise XdrError("portmap list too long")
        out.append(Mapping.unpack(u))
    return out
