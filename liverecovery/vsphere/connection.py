"""How the pyvmomi backend reaches a server: address parsing and the TLS context.

Verification is on unless the caller opts out: pyVim silently skips it for ``localhost`` when it
is given no context, so the client always passes the one made here.
"""

from __future__ import annotations

import ssl
import urllib.parse
from pathlib import Path

from liverecovery.errors import SettingsError

__all__ = ["parse_server", "ssl_context"]


def ssl_context(insecure: bool, ca_file: str | Path | None) -> ssl.SSLContext:
    """A verifying context (system CAs, or only ``ca_file``), or a non-verifying one.

    :raises SettingsError: both asked for, or ``ca_file`` unreadable.
    """
    if insecure and ca_file is not None:
        raise SettingsError(
            "vsphere: --insecure and --ca-file (insecure=True and ca_file= in Python) exclude "
            "each other: verify with the CA file, or do not verify"
        )
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SettingsError(
            f"vsphere: cannot load the CA file {ca_file} (--ca-file, ca_file=): {reason}"
        ) from None


def parse_server(server: str, port: int | None) -> tuple[str, int, str]:
    """(host, port, path) of ``host``, ``host:port`` or ``https://host[:port][/sdk]``.

    ``port``, when given, wins over the one in ``server``. :raises SettingsError: malformed.
    """
    text = server.strip()
    if not text:
        raise SettingsError("vsphere: server must not be empty")
    parsed = urllib.parse.urlsplit(text if "://" in text else f"https://{text}")
    if parsed.scheme != "https":
        raise SettingsError(f"vsphere: server {server!r} must use https")
    try:
        url_port = parsed.port
    except ValueError:
        raise SettingsError(f"vsphere: server {server!r} has an invalid port") from None
    host = parsed.hostname
    if not host:
        raise SettingsError(f"vsphere: server {server!r} names no host")
    path = parsed.path.rstrip("/") or "/sdk"
    return host, port or url_port or 443, path
