"""The line for a port the server cannot listen on: the port, who usually holds it, the flag."""

from __future__ import annotations

import errno

from liverecovery.cli.ports import port_error


def bind_error(code: int, host: str, port: int) -> OSError:
    """What asyncio's ``create_server`` raises."""
    return OSError(
        code,
        f"error while attempting to bind on address ('{host}', {port}): "
        f"[errno {code}] {errno.errorcode[code]}",
    )


def test_port_111_names_rpcbind_and_the_flag() -> None:
    line = port_error(bind_error(errno.EADDRINUSE, "0.0.0.0", 111), {111: "--portmap-port"})
    assert line is not None
    assert "port 111" in line and "taken" in line and "rpcbind" in line
    assert line.endswith("choose another with --portmap-port")


def test_port_2049_names_the_kernel_nfs_server_and_ganesha() -> None:
    line = port_error(bind_error(errno.EADDRINUSE, "::", 2049), {2049: "--nfs-port"})
    assert line is not None and "nfs-server" in line and "Ganesha" in line and "--nfs-port" in line


def test_a_privileged_port_says_what_it_needs() -> None:
    line = port_error(bind_error(errno.EACCES, "0.0.0.0", 111))
    assert line is not None and "CAP_NET_BIND_SERVICE" in line


def test_an_address_not_of_this_machine() -> None:
    line = port_error(bind_error(errno.EADDRNOTAVAIL, "10.9.9.9", 2049))
    assert line is not None and "10.9.9.9 is not an address of this machine" in line


def test_other_os_errors_are_not_port_errors() -> None:
    assert port_error(OSError(errno.ENOENT, "No such file or directory")) is None
    assert port_error(OSError(errno.ECONNREFUSED, "Connection refused")) is None
