"""PORTMAP v2 (RFC 1833 section 3) messages: pure XDR codecs, declared once (``xdr_spec``)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Annotated, Final

import attrs

from liverecovery.nfs import xdr_spec as xs
from liverecovery.nfs.xdr import Packer, Unpacker

__all__ = ["IPPROTO_TCP", "IPPROTO_UDP", "Mapping", "PMAP_PROGRAM", "PMAP_VERSION", "PmapProc"]

PMAP_PROGRAM: Final = 100000
PMAP_VERSION: Final = 2
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
_LIST_BOUND: Final = 100_000


class PmapProc(enum.IntEnum):
    NULL = 0
    SET = 1
    UNSET = 2
    GETPORT = 3
    DUMP = 4
    CALLIT = 5


@xs.message
@attrs.frozen
class Mapping(xs.Message):
    prog: Annotated[int, xs.U32]
    vers: Annotated[int, xs.U32]
    prot: Annotated[int, xs.U32]
    port: Annotated[int, xs.U32]


_MAPPING_LIST: Final = xs.codec(xs.List(xs.spec(Mapping), _LIST_BOUND, "portmap list too long"))


def pack_mapping_list(p: Packer, mappings: Sequence[Mapping]) -> None:
    _MAPPING_LIST.pack(p, mappings)


def unpack_mapping_list(u: Unpacker) -> list[Mapping]:
    out: list[Mapping] = _MAPPING_LIST.unpack(u)
    return out
