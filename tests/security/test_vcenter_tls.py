"""TLS certificate verification toward vCenter is on by default, on the real code path.

The govmomi simulator serves a fresh self-signed certificate (SANs: 127.0.0.1 and localhost).
Connecting to it must fail unless its CA is supplied or verification is explicitly turned off;
a certificate from another CA and a host name the certificate does not name must fail too. The
``liverecovery recover`` command builds its connection the same way, verifying by default.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
from vsphere.conftest import HOST, Simulator, simulator  # noqa: F401 - the simulator fixture

from liverecovery.cli import build_parser
from liverecovery.cli.recover import RecoverConfig
from liverecovery.errors import BackendError, VSphereError
from liverecovery.vsphere.connection import ssl_context
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

from .capture import AllLogs, encodings, exception_text

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


def test_the_default_context_verifies_certificates_and_host_names() -> None:
    default = ssl_context(False, None)
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert default.minimum_version >= ssl.TLSVersion.TLSv1_2
    off = ssl_context(True, None)  # only an explicit opt-out turns it off
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname


def test_connect_and_the_recover_command_verify_unless_told_otherwise(tmp_path: Path) -> None:
    import inspect

    params = inspect.signature(PyvmomiVSphereClient.connect).parameters
    assert params["insecure"].default is False and params["ca_file"].default is None
    base = ["recover", "--vcenter", "vc", "--user", "u", "--password-env", "PW", "--host", "h"]
    base += [str(tmp_path), "--vm", "vm", "--datastore", "ds"]
    parser = build_parser()
    assert RecoverConfig.from_args(parser.parse_args(base), need_job=True).insecure is False
    opted = RecoverConfig.from_args(parser.parse_args([*base, "--insecure"]), need_job=True)
    assert opted.insecure is True


async def _connect(sim: Simulator, server: str, **kw: object) -> PyvmomiVSphereClient:
    with anyio.fail_after(30):
        return await PyvmomiVSphereClient.connect(server, sim.user, sim.password, **kw)  # type: ignore[arg-type]


async def test_the_simulators_self_signed_certificate_is_refused_by_default(
    simulator: Simulator,  # noqa: F811
) -> None:
    with pytest.raises(BackendError) as caught:
        await _connect(simulator, simulator.server)
    assert not isinstance(caught.value, VSphereError)  # refused before any login was tried
    assert caught.value.operation == "vsphere.connect" and "not trusted" in str(caught.value)


async def test_its_ca_or_an_explicit_opt_out_connects(
    simulator: Simulator,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with await _connect(simulator, simulator.server, ca_file=simulator.ca_file) as c:
        assert (await c.find_host(HOST)).name == HOST
    assert not [r for r in caplog.records if "verification is disabled" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        async with await _connect(simulator, simulator.server, insecure=True) as c:
            assert (await c.find_host(HOST)).name == HOST
    assert [r for r in caplog.records if "verification is disabled" in r.getMessage()]


async def test_a_certificate_from_another_ca_is_refused(
    simulator: Simulator,  # noqa: F811
    tmp_path: Path,
) -> None:
    other = tmp_path / "other-ca.pem"
    await anyio.run_process(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(tmp_path / "key.pem"), "-out", str(other), "-days", "1"),
            *("-subj", "/CN=vcsim", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ]
    )
    with pytest.raises(BackendError) as caught:
        await _connect(simulator, simulator.server, ca_file=other)
    assert "not trusted" in str(caught.value)


@contextlib.asynccontextmanager
async def tcp_forwarder(local_host: str, target: tuple[str, int]) -> AsyncIterator[int]:
    """Forward connections to ``local_host``:<port> to ``target`` (same bytes, another name)."""

    async def pipe(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            async for chunk in src:
                await dst.send(chunk)
        with contextlib.suppress(Exception):
            await dst.send_eof()  # type: ignore[attr-defined]

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with (
            client,
            await anyio.connect_tcp(*target) as upstream,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(pipe, client, upstream)
            tg.start_soon(pipe, upstream, client)

    listener = await anyio.create_tcp_listener(local_host=local_host, local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield int(listener.extra(anyio.abc.SocketAttribute.local_port))
        finally:
            tg.cancel_scope.cancel()


async def test_a_host_name_the_certificate_does_not_name_is_refused(
    simulator: Simulator,  # noqa: F811
) -> None:
    """127.0.0.2 reaches the same server (forwarded), but the certificate names 127.0.0.1."""
    async with tcp_forwarder("127.0.0.2", (simulator.host, simulator.port)) as port:
        with pytest.raises(BackendError) as caught:
            await _connect(simulator, f"127.0.0.2:{port}", ca_file=simulator.ca_file)
        assert "not trusted" in str(caught.value) and "127.0.0.2" in str(caught.value)
        # Control: the forwarder works, so the refusal above was about the name. (Only calls the
        # client runs in worker threads here: the event loop is busy forwarding.)
        async with await _connect(simulator, f"127.0.0.2:{port}", insecure=True) as c:
            assert (await c.nfs_volumes(HOST))[1] > 0  # NFS.MaxVolumes, read from the host


async def test_the_vcenter_password_reaches_no_log_and_no_exception(
    simulator: Simulator,  # noqa: F811
    all_logs: AllLogs,
) -> None:
    """Login, a failed login and logout with every logger at DEBUG. (The simulator's own
    password is "pass", too common a word to search for: the wrong one is searched.)"""
    wrong = "Wr0ng-Vcenter-Secret-5521"
    async with await _connect(simulator, simulator.server, ca_file=simulator.ca_file) as c:
        await c.nfs_volumes(HOST)
    with pytest.raises(VSphereError) as caught:
        await PyvmomiVSphereClient.connect(
            simulator.server, simulator.user, wrong, ca_file=simulator.ca_file
        )
    assert caught.value.fault == "InvalidLogin"
    texts = [exception_text(caught.value), *all_logs.lines]
    needles = encodings(wrong)
    found = [(n, t[:200]) for t in texts for n in needles if n in t.encode()]
    assert not found, found[:5]
