"""A port the NFS server could not listen on, said in one line an operator can act on.

asyncio reports ``[Errno 98] error while attempting to bind on address ('0.0.0.0', 111)``; the
operator needs the port, who usually holds it, and the flag or setting that moves it.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping

__all__ = ["bound_port", "port_error"]

_ADDRESS = re.compile(r"address \('(?P<host>[^']*)', (?P<port>\d+)")

_HOLDERS: Mapping[int, str] = {
    111: "rpcbind, the system portmapper, usually holds it (`ss -ltnp 'sport = :111'` shows who)",
    2049: (
        "a kernel NFS server (nfs-server) or NFS-Ganesha usually holds it "
        "(`ss -ltnp 'sport = :2049'` shows who)"
    ),
}


def bound_port(exc: OSError) -> tuple[str, int] | None:
    """(host, port) a failed bind named, or None when ``exc`` is no bind failure."""
    match = _ADDRESS.search(str(exc))
    if match is None:
        return None
    return match["host"], int(match["port"])


def port_error(exc: OSError, flags: Mapping[int, str] | None = None) -> str | None:
    """The line for a failed listen, or None when ``exc`` is something else.

    ``flags`` maps each port the command listens on to the flag or setting that changes it.
    """
    where = bound_port(exc)
    if where is None or exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return None
    host, port = where
    change = (flags or {}).get(port)
    move = f"; choose another with {change}" if change else ""
    if exc.errno == errno.EADDRINUSE:
        holder = _HOLDERS.get(port, "another process holds it")
        return f"cannot listen on port {port} ({host}): it is taken; {holder}{move}"
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on port {port} ({host}): permission denied; ports below 1024 need "
            f"root or CAP_NET_BIND_SERVICE{move}"
        )
    return f"cannot listen on {host}:{port}: {host} is not an address of this machine"
