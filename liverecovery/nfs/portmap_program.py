"""The PORTMAP program, version 2 (RFC 1833): where the server's programs listen.

Answers GETPORT and DUMP from ``mappings``, which the server sets when it binds its ports;
registrations from clients (SET, UNSET) are refused.
"""

from __future__ import annotations

from typing import Final

from liverecovery.nfs import portmap_codec as pm
from liverecovery.nfs.dispatch import GarbageArgs, proc_unavailable
from liverecovery.nfs.rpc import encode_accepted
from liverecovery.nfs.xdr import Part, Unpacker, XdrError

__all__ = ["PortmapProgram"]


class PortmapProgram:
    """PORTMAP v2 for the programs of one server."""

    PROGRAM: Final = pm.PMAP_PROGRAM
    VERSION: Final = pm.PMAP_VERSION

    def __init__(self) -> None:
        self.mappings: list[pm.Mapping] = []
        """(program, version, protocol) -> port of every program served, this one included."""

    async def call(self, xid: int, proc: int, args: Unpacker, peer: str) -> list[Part]:
        p = encode_accepted(xid)
        try:
            if proc == pm.PmapProc.NULL:
                pass
            elif proc == pm.PmapProc.GETPORT:
                want = pm.Mapping.unpack(args)
                port = 0
                for m in self.mappings:
                    if (m.prog, m.vers, m.prot) == (want.prog, want.vers, want.prot):
                        port = m.port
                p.u32(port)
            elif proc == pm.PmapProc.DUMP:
                pm.pack_mapping_list(p, self.mappings)
            elif proc in (pm.PmapProc.SET, pm.PmapProc.UNSET):
                pm.Mapping.unpack(args)
                p.boolean(False)  # registrations are not accepted from clients
            else:
                return proc_unavailable(xid)
        except XdrError as exc:
            raise GarbageArgs(str(exc)) from None
        return [p.getvalue()]
