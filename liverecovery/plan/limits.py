"""The ESX hosts' NFS limits for a whole plan, checked before anything starts. Pure.

Every VM bound for one host shares that host's one export and one NFS datastore
(``job/sharing.py``), so a plan needs at most one new NFSv3 mount per host however many VMs go
there. A host mounts at most ``NFS.MaxVolumes`` NFSv3 datastores (32 by default on ESXi 6.0 to
8.0, at most 256) and opens at most ``SunRPC.MaxConnPerIP`` TCP connections (128) to one server
address: since vSphere 5.0 an NFSv3 datastore uses one connection, so each of our datastores on
the host is one connection to our address. Our own server also bounds connections, in all and
per client address (``nfs_max_connections``, ``nfs_max_connections_per_address``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import attrs

from liverecovery.backends import HostFacts
from liverecovery.job.sharing import datastore_name_for

__all__ = ["CONNECTIONS_PER_MOUNT", "OUR_PREFIX", "ServerLimits", "limit_problems"]

CONNECTIONS_PER_MOUNT = 1
"""TCP connections an ESXi NFSv3 datastore opens (one since vSphere 5.0)."""

OUR_PREFIX = "liverecovery-"
"""How ``datastore_name_for`` names our datastores (each one connection to our address)."""


@attrs.frozen
class ServerLimits:
    """Our NFS server's connection bounds (from the settings)."""

    max_connections: int = 256
    max_per_address: int = 64


def limit_problems(
    placement: Mapping[str, str],
    hosts: Mapping[str, HostFacts],
    *,
    client_addresses: Mapping[str, str] | None = None,
    server: ServerLimits | None = None,
) -> list[str]:
    """Every way the plan (``placement``: VM -> host) would exceed a limit, each naming the host
    (or address) and the counts; empty: it fits. ``client_addresses`` maps a host to the address
    it connects from (default: its name)."""
    server = server or ServerLimits()
    addresses = client_addresses or {}
    vms_on = Counter(placement.values())
    problems: list[str] = []
    connections: dict[str, int] = {}
    for host in sorted(vms_on):
        facts = hosts.get(host)
        if facts is None or not facts.found:
            continue  # reported as an unknown host
        ours = datastore_name_for(host)
        mounted = set(facts.nfs_datastores)
        new = ours not in mounted
        if new and len(mounted) + 1 > facts.nfs_max_volumes:
            problems.append(
                f"host {host!r} already mounts {len(mounted)} NFS datastores and its "
                f"NFS.MaxVolumes is {facts.nfs_max_volumes}: the plan's {vms_on[host]} VM(s) "
                f"there need 1 more (they share datastore {ours!r}); unmount one or raise "
                "NFS.MaxVolumes (at most 256), or place them on another host"
            )
        ours_there = {d for d in mounted if d.startswith(OUR_PREFIX)} | {ours}
        conns = len(ours_there) * CONNECTIONS_PER_MOUNT
        limit = facts.max_conn_per_ip
        if conns > limit:
            problems.append(
                f"host {host!r} would open {conns} TCP connections to our NFS server's address "
                f"and its SunRPC.MaxConnPerIP is {limit}"
            )
        connections[host] = CONNECTIONS_PER_MOUNT if new else 0
        connections[host] += (len(ours_there) - 1) * CONNECTIONS_PER_MOUNT
    total = sum(connections.values())
    if total > server.max_connections:
        problems.append(
            f"the plan's {len(connections)} host(s) would open {total} connections to our NFS "
            f"server, which keeps at most {server.max_connections} (nfs_max_connections)"
        )
    by_address: Counter[str] = Counter()
    for host, n in connections.items():
        by_address[addresses.get(host, host)] += n
    for address, n in sorted(by_address.items()):
        if n > server.max_per_address:
            problems.append(
                f"address {address!r} would open {n} connections to our NFS server, which "
                f"allows {server.max_per_address} per address (nfs_max_connections_per_address)"
            )
    return problems
