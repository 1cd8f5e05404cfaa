"""Clients outside an export's allow list get nothing.

A second client on loopback connects from 127.0.0.2 (our NfsClient binds its source address):
the server sees a different peer, exactly as it would see another host. The outsider is the
client of another export (``OPEN``), so that its connection is kept and every call is checked;
an address no export allows is not even kept connected (``test_hostile_peers.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import FileType, SetAttributes, Stability
from liverecovery.nfs.localfs import LocalFilesystem

from .conftest import EXPORT, Served

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

OUTSIDER = "127.0.0.2"
OPEN = "/for-outsider"  # exported to 127.0.0.2 only


@pytest.fixture
async def outsider(served: Served, open_export: Path) -> AsyncIterator[NfsClient]:
    async with await NfsClient.connect(
        "127.0.0.1", served.server.port, call_timeout=20, local_host=OUTSIDER
    ) as c:
        yield c


@pytest.fixture
async def open_export(served: Served, tmp_path: Path) -> Path:
    d = tmp_path / "open"
    d.mkdir()
    (d / "mine").write_bytes(b"the outsider may read this")
    await served.server.export_filesystem(OPEN, LocalFilesystem(d), [f"{OUTSIDER}/32"])
    return d


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


async def test_the_server_sees_the_bound_source_address(
    served: Served, client: NfsClient, outsider: NfsClient, open_export: Path
) -> None:
    """Positive control: the binding is real, so the refusals below are about the address."""
    root = await outsider.mount(OPEN)
    fh, _ = await outsider.lookup(root, "mine")
    assert await outsider.read(fh, 0, 100) == (b"the outsider may read this", True)
    assert [m.hostname for m in await outsider.mounts()] == [OUTSIDER]
    with pytest.raises(NfsError) as exc:
        await client.mount(OPEN)  # 127.0.0.1 is not in this export's list
    assert exc.value.status == NfsStatus.ACCES


async def test_mount_is_refused_for_every_path_into_the_export(
    served: Served, outsider: NfsClient
) -> None:
    (served.data / "sub").mkdir()
    for path in (EXPORT, EXPORT + "/", EXPORT + "/sub", EXPORT + "/../" + EXPORT, "//export"):
        with pytest.raises(NfsError) as exc:
            await outsider.mount(path)
        assert exc.value.status == NfsStatus.ACCES, path
    # Not even the refused export's name, nor who may mount it: only its own export.
    assert [e.directory for e in await outsider.exports()] == [OPEN]
    assert await outsider.mounts() == []


async def test_every_procedure_with_a_handle_of_the_export_is_refused(
    served: Served, client: NfsClient, outsider: NfsClient
) -> None:
    root = await client.mount(EXPORT)
    d, _ = await client.mkdir(root, "dir")
    f, _ = await client.create(root, "file")
    await client.write(f, 0, b"owned by the allowed host", Stability.FILE_SYNC)
    link, _ = await client.symlink(root, "link", "file")
    before = _tree(served.data)
    o = outsider
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "GETATTR": lambda: o.getattr(f),
        "SETATTR": lambda: o.setattr(f, SetAttributes(mode=0o777, size=0)),
        "LOOKUP": lambda: o.lookup(root, "file"),
        "ACCESS": lambda: o.access(f),
        "READLINK": lambda: o.readlink(link),
        "READ": lambda: o.read(f, 0, 100),
        "WRITE": lambda: o.write(f, 0, b"outsider", Stability.FILE_SYNC),
        "CREATE": lambda: o.create(root, "planted"),
        "MKDIR": lambda: o.mkdir(root, "planted-dir"),
        "SYMLINK": lambda: o.symlink(root, "planted-link", "/"),
        "MKNOD": lambda: o.mknod(
            root, "planted-fifo", n3.MknodArgs(root, "planted-fifo", FileType.FIFO)
        ),
        "REMOVE": lambda: o.remove(root, "file"),
        "RMDIR": lambda: o.rmdir(root, "dir"),
        "RENAME": lambda: o.rename(root, "file", d, "moved"),
        "LINK": lambda: o.link(f, root, "hardlink"),
        "READDIR": lambda: o.readdir(root),
        "READDIRPLUS": lambda: o.readdirplus(root),
        "FSSTAT": lambda: o.fsstat(root),
        "FSINFO": lambda: o.fsinfo(root),
        "PATHCONF": lambda: o.pathconf(root),
        "COMMIT": lambda: o.commit(f),
    }
    assert len(calls) == len(n3.Proc) - 1  # every procedure but NULL
    with anyio.fail_after(20):
        for name, call in calls.items():
            with pytest.raises(NfsError) as exc:
                await call()
            assert exc.value.status == NfsStatus.ACCES, name
    assert _tree(served.data) == before
    assert (await client.read(f, 0, 100))[0] == b"owned by the allowed host"  # still served


async def test_a_second_handle_from_a_refused_export_is_refused(
    served: Served, client: NfsClient, outsider: NfsClient, open_export: Path
) -> None:
    """RENAME and LINK carry two handles: the outsider's own export's handle first, one of the
    refused export second. The second is checked too."""
    root = await client.mount(EXPORT)
    theirs, _ = await client.mkdir(root, "dir")
    mine_root = await outsider.mount(OPEN)
    mine, _ = await outsider.lookup(mine_root, "mine")
    with pytest.raises(NfsError) as exc:
        await outsider.rename(mine_root, "mine", theirs, "stolen")
    assert exc.value.status == NfsStatus.ACCES
    with pytest.raises(NfsError) as exc:
        await outsider.link(mine, theirs, "stolen")
    assert exc.value.status == NfsStatus.ACCES
    assert (open_export / "mine").exists() and not (served.data / "dir" / "stolen").exists()


async def test_narrowing_the_list_cuts_off_a_client_that_already_mounted(
    served: Served, outsider: NfsClient, open_export: Path
) -> None:
    root = await outsider.mount(OPEN)
    await served.server.set_clients(OPEN, ["127.0.0.3"])
    with pytest.raises(NfsError) as exc:
        await outsider.getattr(root)
    assert exc.value.status == NfsStatus.ACCES
    await served.server.set_clients(OPEN, ["127.0.0.0/30"])
    assert (await outsider.getattr(root)).type == FileType.DIR
