"""Names cannot escape an export (a ``LocalFilesystem`` served by our server, over the wire).

The export's directory has a sibling, ``outside``, holding a secret: no sequence of LOOKUP,
CREATE, MKDIR, RENAME, LINK, SYMLINK, READLINK+LOOKUP, READ, WRITE or SETATTR reaches it or
changes anything outside the export, whatever the names or symlink targets.
"""

from __future__ import annotations

import os
import random
import stat

import anyio
import pytest

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import CreateMode, FileType, SetAttributes, Stability
from liverecovery.nfs.localfs import LocalFilesystem

from .conftest import EXPORT, SECRET_BYTES, Served

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

ESCAPES = ("..", "../outside", "../outside/secret.txt", "/", "/etc/passwd", "a/b", "a\0b", "\0")


def _outside_state(served: Served) -> dict[str, tuple[int, bytes | None]]:
    """Everything next to the export (not inside it, not the server's state): modes and bytes."""
    base = served.data.parent
    out: dict[str, tuple[int, bytes | None]] = {}
    for p in sorted(base.rglob("*")):
        if served.data in p.parents or p == served.data or served.state in (p, *p.parents):
            continue
        st = p.lstat()
        out[str(p.relative_to(base))] = (
            stat.S_IMODE(st.st_mode),
            p.read_bytes() if stat.S_ISREG(st.st_mode) else None,
        )
    return out


async def _status(call: object) -> NfsStatus:
    try:
        await call  # type: ignore[misc]
    except NfsError as exc:
        return exc.status
    return NfsStatus.OK


async def test_escaping_names_are_refused_by_every_procedure(
    served: Served, client: NfsClient
) -> None:
    before = _outside_state(served)
    root = await client.mount(EXPORT)
    f, _ = await client.create(root, "f")
    sub, _ = await client.mkdir(root, "sub")
    long = "x" * 256
    expected = {n: NfsStatus.ACCES for n in ESCAPES if n != ".."}
    expected[long] = NfsStatus.NAMETOOLONG
    c = client
    with anyio.fail_after(30):
        for name, status in expected.items():
            assert await _status(c.lookup(root, name)) == status, ("LOOKUP", name)
            assert await _status(c.create(root, name)) == status, ("CREATE", name)
            excl = c.create(root, name, mode=CreateMode.EXCLUSIVE, verifier=b"12345678")
            assert await _status(excl) == status, ("CREATE EXCLUSIVE", name)
            assert await _status(c.mkdir(root, name)) == status, ("MKDIR", name)
            assert await _status(c.symlink(root, name, "f")) == status, ("SYMLINK", name)
            assert await _status(c.link(f, root, name)) == status, ("LINK", name)
            assert await _status(c.rename(root, "f", sub, name)) == status, ("RENAME to", name)
            assert await _status(c.rename(root, name, sub, "g")) == status, ("RENAME from", name)
            assert await _status(c.remove(sub, name)) == status, ("REMOVE", name)
            assert await _status(c.rmdir(sub, name)) == status, ("RMDIR", name)
        for name in (".", ".."):  # no entry can be made, moved or removed under a dot name
            assert await _status(c.create(sub, name)) == NfsStatus.INVAL
            assert await _status(c.mkdir(sub, name)) == NfsStatus.INVAL
            assert await _status(c.symlink(sub, name, "/")) == NfsStatus.INVAL
            assert await _status(c.rename(root, "f", root, name)) == NfsStatus.INVAL
            assert await _status(c.rename(root, name, sub, "x")) == NfsStatus.INVAL
            assert await _status(c.rmdir(sub, name)) == NfsStatus.INVAL
        # '..' only ever climbs to the export's root, never past it.
        assert (await c.lookup(root, ".."))[0] == root
        assert (await c.lookup(sub, ".."))[0] == root
        assert (await c.lookup(await c.lookup_path(root, "sub/../.."), ".."))[0] == root
    assert sorted(os.listdir(served.data)) == ["f", "sub"] and not os.listdir(served.data / "sub")
    assert _outside_state(served) == before


async def test_a_names_longest_allowed_form_works(served: Served, client: NfsClient) -> None:
    """The refusals above are about the names: 255 bytes and odd but legal names are fine."""
    root = await client.mount(EXPORT)
    for name in ("x" * 255, "é" * 127, "...", "..x", "\\..\\", " ", "-"):
        await client.create(root, name)
        assert (served.data / name).is_file()


async def test_symlinks_pointing_outside_are_never_followed(
    served: Served, client: NfsClient
) -> None:
    outside = served.outside
    os.symlink(outside, served.data / "planted-dir")  # planted by someone on the server
    os.symlink(outside / "secret.txt", served.data / "planted-file")
    secret_mode = stat.S_IMODE((outside / "secret.txt").stat().st_mode)
    before = _outside_state(served)
    root = await client.mount(EXPORT)
    made, _ = await client.symlink(root, "made-abs", str(outside))  # made by a client
    await client.symlink(root, "made-rel", "../outside")
    await client.symlink(root, "made-file", "../outside/secret.txt")
    with anyio.fail_after(30):
        for name in ("planted-dir", "made-abs", "made-rel"):
            link, attrs = await client.lookup(root, name)
            assert attrs is not None and attrs.type == FileType.LNK
            # READLINK + LOOKUP: the target is text for the client, never a path for the server.
            assert (await client.readlink(link)).endswith("outside")
            assert await _status(client.lookup(link, "secret.txt")) == NfsStatus.NOTDIR
            assert await _status(client.create(link, "x")) == NfsStatus.NOTDIR
            assert await _status(client.mkdir(link, "x")) == NfsStatus.NOTDIR
            assert await _status(client.readdir(link)) == NfsStatus.NOTDIR
            assert await _status(client.rename(root, "made-file", link, "x")) == NfsStatus.NOTDIR
        for name in ("planted-file", "made-file"):
            link, _ = await client.lookup(root, name)
            assert await _status(client.read(link, 0, 100)) == NfsStatus.INVAL
            w = client.write(link, 0, b"overwritten", Stability.FILE_SYNC)
            assert await _status(w) == NfsStatus.INVAL
            assert await _status(client.setattr(link, SetAttributes(size=0))) == NfsStatus.INVAL
            await _status(client.setattr(link, SetAttributes(mode=0o777)))  # the link, if at all
            assert await _status(client.commit(link)) == NfsStatus.INVAL
            # CREATE (UNCHECKED, size 0) over a symlink must not truncate what it points to.
            trunc = client.create(root, name, SetAttributes(mode=0o666, size=0))
            assert await _status(trunc) != NfsStatus.OK
        assert await client.readlink(made) == str(outside)
    assert (outside / "secret.txt").read_bytes() == SECRET_BYTES
    assert stat.S_IMODE((outside / "secret.txt").stat().st_mode) == secret_mode
    assert _outside_state(served) == before


async def test_a_directory_swapped_for_an_outside_symlink_keeps_its_handle_inside(
    served: Served, client: NfsClient
) -> None:
    """RENAME a directory away and put a symlink to the outside under its old name: the old
    handle still means the directory (now renamed), not whatever the old path points at."""
    before = _outside_state(served)
    root = await client.mount(EXPORT)
    sub, _ = await client.mkdir(root, "sub")
    await client.rename(root, "sub", root, "moved")
    await client.symlink(root, "sub", str(served.outside))
    fh, _ = await client.create(sub, "secret.txt", SetAttributes(mode=0o600, size=0))
    await client.write(fh, 0, b"inside", Stability.FILE_SYNC)
    assert (served.data / "moved" / "secret.txt").read_bytes() == b"inside"
    # Also after a server restart forgets every cached path (handles are re-resolved by inode).
    fs = LocalFilesystem(served.data)
    await served.server.export_filesystem("/again", fs, ["127.0.0.1"])
    again = await client.mount("/again")
    moved, _ = await client.lookup(again, "moved")
    await client.create(moved, "second", SetAttributes(mode=0o600))
    assert (served.data / "moved" / "second").is_file()
    assert _outside_state(served) == before
    await fs.aclose()


async def test_mount_paths_cannot_climb_out(served: Served, client: NfsClient) -> None:
    os.symlink(served.outside, served.data / "planted-dir")
    for path in (EXPORT + "/..", EXPORT + "/../outside", EXPORT + "/planted-dir", "/../export"):
        try:
            fh = await client.mount(path)
        except NfsError:
            continue
        # "/../export" normalises to the export itself: fine, as long as it is the export.
        assert (await client.getattr(fh)).fileid == served.data.stat().st_ino, path


async def test_random_hostile_names_never_touch_the_outside(
    served: Served, client: NfsClient
) -> None:
    """A seeded mix of traversal fragments, separators, NULs and lengths, through every
    name-taking procedure: whatever gets created lands directly in the export."""
    rng = random.Random(1124)
    parts = ["..", ".", "/", "\0", "outside", "secret.txt", "x" * 120, "é", "\udcff", "~", "\\"]
    before = _outside_state(served)
    root = await client.mount(EXPORT)
    f, _ = await client.create(root, "f")
    made: set[str] = {"f"}
    with anyio.fail_after(40):
        for _ in range(150):
            name = "".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
            op = rng.randrange(5)
            if op == 0:
                call = client.create(root, name)
            elif op == 1:
                call = client.mkdir(root, name)
            elif op == 2:
                call = client.symlink(root, name, name)
            elif op == 3:
                call = client.link(f, root, name)
            else:
                call = client.lookup(root, name)
            if await _status(call) == NfsStatus.OK and op < 4:
                made.add(name)
    assert {os.fsdecode(n) for n in os.listdir(os.fsencode(served.data))} <= made | {"f"}
    assert _outside_state(served) == before
