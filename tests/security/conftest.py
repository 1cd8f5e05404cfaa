"""Fixtures for the security tests: our NFS server exporting a directory that has an outside."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest

from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer

from .capture import AllLogs, capture_all_logs

EXPORT = "/export"
SECRET_BYTES = b"outside the export: must never be served or changed\n"


@attrs.frozen
class Served:
    """A live server exporting ``data`` at ``EXPORT`` to 127.0.0.1; ``outside`` is a sibling
    directory (with ``secret.txt``) that no client may reach."""

    server: NfsServer
    data: Path
    outside: Path
    state: Path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    data = tmp_path / "data"
    outside = tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET_BYTES)
    state = tmp_path / "state"
    async with NfsServer(state) as server:
        fs = LocalFilesystem(data)
        await server.export_filesystem(EXPORT, fs, ["127.0.0.1"])
        yield Served(server, data, outside, state)
        await fs.aclose()


@pytest.fixture
async def client(served: Served) -> AsyncIterator[NfsClient]:
    async with await NfsClient.connect(
        "127.0.0.1", served.server.port, call_timeout=20, local_host="127.0.0.1"
    ) as c:
        yield c


@pytest.fixture
def all_logs() -> Iterator[AllLogs]:
    """Every log record of every logger, at DEBUG, while the test runs."""
    with capture_all_logs() as handler:
        yield handler
    assert handler.lines, "nothing was logged: the capture is broken"
