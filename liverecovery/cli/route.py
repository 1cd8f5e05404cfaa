"""The address the ESX host can reach this machine at: that of the interface routing to it.

A UDP socket ``connect()`` only asks the kernel for a route; no packet is sent. Multi-homed
machines, NAT and VPNs can still need ``--nfs-address``, which always wins.
"""

from __future__ import annotations

import socket

from liverecovery.errors import SettingsError

__all__ = ["route_address"]


def route_address(target: str) -> str:
    """This machine's source address towards ``target`` (a name or an address).

    :raises SettingsError: ``target`` does not resolve or no route leads to it, saying to pass
        ``--nfs-address``.
    """
    try:
        infos = socket.getaddrinfo(target, 2049, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            found = str(probe.getsockname()[0])
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SettingsError(
            f"--nfs-address not given and no route to the ESX host {target!r} to find it "
            f"({reason}): pass --nfs-address ADDR, the address the ESX host reaches this "
            "machine at"
        ) from None
    if found in ("0.0.0.0", "::"):
        raise SettingsError(f"--nfs-address not given and no route to {target!r}: pass it")
    return found
