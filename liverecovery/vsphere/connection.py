"""How the pyvmomi backend reaches a server: address parsing and the TLS context.

Verification is on unless the caller opts out: pyVim silently skips it for ``localhost`` when it
is given no context, so the client always passes the one made here.

Timeouts: pyVmomi's ``httpConnectionTimeout`` becomes the ``timeout`` of each
``http.client.HTTPSConnection`` of the SOAP stub, so it bounds the TCP connect and every socket
read (a vCenter that accepts but never answers, e.g. a stopped process, fails there). A SOAP call
is a connect, a send and reads, so the client also bounds each call as a whole
(``call_bound``), and abandons the worker thread when the bound or a cancel comes first.
(``connectionPoolTimeout`` is only how long an idle pooled connection is kept.)
"""

from __future__ import annotations

import ssl
import urllib.parse
from pathlib import Path

from liverecovery.errors import SettingsError

__all__ = ["DEFAULT_HTTP_TIMEOUT_S", "call_bound", "parse_server", "ssl_context"]

DEFAULT_HTTP_TIMEOUT_S = 60.0
"""The connect and socket read timeout of the SOAP connection, and each call's bound."""


def call_bound(http_timeout: float) -> float:
    """How long one SOAP call may take in all: the socket timeout, with a little slack so the
    socket's own timeout (a clearer error from the thread) usually comes first."""
    return http_timeout + min(5.0, http_timeout / 10)


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
