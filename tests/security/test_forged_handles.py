"""Forged, bit-flipped, truncated and extended file handles are never accepted.

Handles are taken from a live server; 10,000 distinct non-genuine variants are derived from them
with a seeded generator (deterministic) and all refused by the server's own handle key; a few
hundred of them then go over the wire with GETATTR/READ/WRITE/LOOKUP and get NFS3ERR_BADHANDLE,
while the genuine handles keep working and nothing on disk changes.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from liverecovery.errors import NfsClientError, NfsError, NfsStatus
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import Stability
from liverecovery.nfs.handles import HANDLE_SIZE, HandleCodec, load_or_create_key
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.nfs3_codec import FHSIZE

from .conftest import EXPORT, Served

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

FORGED_COUNT = 10_000
WIRE_COUNT = 320
SEED = 20261124
CONTENT = b"the genuine file's bytes\n" * 10
_BODY = struct.Struct(">BxxxIIQ")  # the documented layout: version, pad, export, generation, id
_MAC = HANDLE_SIZE - _BODY.size


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for a directory)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def forge(genuine: list[bytes], seed: int, count: int) -> dict[str, list[bytes]]:
    """``count`` distinct handles derived from ``genuine`` by someone without the key, by kind."""
    rng = random.Random(seed)
    seen = set(genuine)
    kinds: dict[str, list[bytes]] = {}

    def add(kind: str, fh: bytes) -> None:
        if fh not in seen and sum(map(len, kinds.values())) < count:
            seen.add(fh)
            kinds.setdefault(kind, []).append(fh)

    bodies = [_BODY.unpack(g[: _BODY.size]) for g in genuine]
    for g in genuine:  # every single bit
        for bit in range(len(g) * 8):
            flipped = bytearray(g)
            flipped[bit // 8] ^= 1 << (bit % 8)
            add("bit flip", bytes(flipped))
    for g in genuine:
        for n in range(len(g)):
            add("truncated", g[:n])
        for n in range(1, FHSIZE - len(g) + 1):
            add("extended", g + rng.randbytes(n))
            add("extended", g + bytes(n))
        for n in (FHSIZE + 1, 128, 1024):
            add("oversized", g + rng.randbytes(n - len(g)))
    for version, export_id, generation, fileid in bodies:
        other_ids = {b[1] for b in bodies} | {0, export_id + 1, 2**32 - 1}
        mac = genuine[bodies.index((version, export_id, generation, fileid))][_BODY.size :]
        for eid in other_ids - {export_id}:  # another export, MAC kept
            add("wrong export id", _BODY.pack(version, eid, generation, fileid) + mac)
        for gen in (generation - 1, generation + 1, 0, 2**32 - 1):  # another generation
            add("wrong generation", _BODY.pack(version, export_id, gen % 2**32, fileid) + mac)
        for fid in (fileid + 1, fileid - 1, 1, 2, 0, 2**64 - 1, rng.getrandbits(64)):
            add("wrong file id", _BODY.pack(version, export_id, generation, fid % 2**64) + mac)
        for ver in (0, 2, 255):
            add("wrong version", _BODY.pack(ver, export_id, generation, fileid) + mac)
        body = bytearray(_BODY.pack(version, export_id, generation, fileid))
        for i in (1, 2, 3):  # the padding bytes are authenticated too
            padded = bytearray(body)
            padded[i] = 0xFF
            add("padding set", bytes(padded) + mac)
        add("zero MAC", bytes(body) + bytes(_MAC))
        add("truncated SHA-256 without key", bytes(body) + hashlib.sha256(body).digest()[:_MAC])
    for a in genuine:  # one handle's body with another's MAC
        for b in genuine:
            if a != b:
                add("spliced MAC", a[: _BODY.size] + b[_BODY.size :])
    per_kind = (count - sum(map(len, kinds.values()))) // 4
    for _ in range(per_kind):  # right layout, right fields or guessed ones, wrong key
        version, export_id, generation, fileid = rng.choice(bodies)
        if rng.random() < 0.5:
            export_id, generation = rng.getrandbits(8), rng.getrandbits(8)
            fileid = rng.getrandbits(rng.choice((8, 32, 64)))
        add("wrong key", HandleCodec(rng.randbytes(32)).encode(export_id, generation, fileid))
    for _ in range(per_kind):
        add("random bytes", rng.randbytes(rng.choice((HANDLE_SIZE, rng.randrange(FHSIZE + 1)))))
    while sum(map(len, kinds.values())) < count:  # several random bits of a genuine handle
        flipped = bytearray(rng.choice(genuine))
        for bit in rng.sample(range(HANDLE_SIZE * 8), rng.randint(2, 64)):
            flipped[bit // 8] ^= 1 << (bit % 8)
        add("random bit flips", bytes(flipped))
    return kinds


@pytest.fixture
async def genuine(served: Served, client: NfsClient, tmp_path: Path) -> dict[str, bytes]:
    """Genuine handles of two exports: roots, a directory, files."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_bytes(b"x")
    await served.server.export_filesystem("/other", LocalFilesystem(other), ["127.0.0.1"])
    root = await client.mount(EXPORT)
    d, _ = await client.mkdir(root, "dir")
    file, _ = await client.create(d, "file")
    await client.write(file, 0, CONTENT, Stability.FILE_SYNC)
    small, _ = await client.create(root, "small")
    other_root = await client.mount("/other")
    x, _ = await client.lookup(other_root, "x")
    return {"root": root, "dir": d, "file": file, "small": small, "other": other_root, "x": x}


def test_forging_is_deterministic_and_covers_every_kind() -> None:
    codec = HandleCodec(b"k" * 32)
    genuine = [codec.encode(1, 1, 7), codec.encode(2, 3, 2**40)]
    one, two = forge(genuine, SEED, FORGED_COUNT), forge(genuine, SEED, FORGED_COUNT)
    assert one == two
    assert sum(map(len, one.values())) == FORGED_COUNT
    assert len({fh for fhs in one.values() for fh in fhs}) == FORGED_COUNT
    assert len(one["bit flip"]) == 2 * HANDLE_SIZE * 8
    assert len(one) >= 14, sorted(one)


async def test_ten_thousand_forged_handles_are_refused_by_the_decoder(
    served: Served, genuine: dict[str, bytes]
) -> None:
    codec = HandleCodec(load_or_create_key(served.state))  # the key the server uses
    for fh in genuine.values():
        codec.decode(fh)  # the genuine ones authenticate: the key is the server's
    kinds = forge(list(genuine.values()), SEED, FORGED_COUNT)
    assert sum(map(len, kinds.values())) == FORGED_COUNT
    accepted: list[tuple[str, bytes]] = []
    for kind, handles in kinds.items():
        for fh in handles:
            try:
                h = codec.decode(fh)
            except NfsError as exc:
                assert exc.status == NfsStatus.BADHANDLE, (kind, fh.hex(), exc)
            else:
                accepted.append((kind, fh, h))  # type: ignore[arg-type]
    assert not accepted, accepted[:5]


async def test_forged_handles_over_the_wire_get_badhandle_and_change_nothing(
    served: Served, client: NfsClient, genuine: dict[str, bytes]
) -> None:
    before = _tree(served.data)
    kinds = forge(list(genuine.values()), SEED, FORGED_COUNT)
    rng = random.Random(SEED + 1)
    wire_kinds = {k: v for k, v in kinds.items() if k != "oversized"}
    per_kind = WIRE_COUNT // len(wire_kinds)
    sample = [
        (kind, fh)
        for kind, handles in sorted(wire_kinds.items())
        for fh in rng.sample(handles, min(per_kind, len(handles)))
    ]
    rest = [(k, fh) for k, fhs in sorted(wire_kinds.items()) for fh in fhs if (k, fh) not in sample]
    sample += rng.sample(rest, WIRE_COUNT - len(sample))  # every kind, topped up at random
    ops: list[Callable[[bytes], Awaitable[object]]] = [
        client.getattr,
        lambda fh: client.read(fh, 0, 4096),
        lambda fh: client.write(fh, 0, b"forged write", Stability.FILE_SYNC),
        lambda fh: client.lookup(fh, "file"),
        lambda fh: client.create(fh, "planted"),
    ]
    outcomes: list[tuple[str, bytes, object]] = []

    async def attempt(i: int, kind: str, fh: bytes) -> None:
        try:
            outcomes.append((kind, fh, await ops[i % len(ops)](fh)))
        except NfsError as exc:
            outcomes.append((kind, fh, exc.status))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i, (kind, fh) in enumerate(sample):
                tg.start_soon(attempt, i, kind, fh)
    wrong = [(k, fh.hex(), r) for k, fh, r in outcomes if r != NfsStatus.BADHANDLE]
    assert len(outcomes) == len(sample) and not wrong, wrong[:5]

    # Handles longer than NFS3_FHSIZE do not even decode: the call is refused as garbage.
    for fh in kinds["oversized"][:3]:
        with pytest.raises(NfsClientError, match="GARBAGE_ARGS"):
            await client.getattr(fh)

    # The server keeps serving the genuine handles, and no forged write or create landed.
    with anyio.fail_after(10):
        assert (await client.getattr(genuine["root"])).fileid == served.data.stat().st_ino
        assert await client.read(genuine["file"], 0, 4096) == (CONTENT, True)
        assert await client.read(genuine["x"], 0, 10) == (b"x", True)
    assert _tree(served.data) == before


async def test_authentic_handles_of_gone_exports_and_generations_are_stale(
    served: Served, client: NfsClient, genuine: dict[str, bytes]
) -> None:
    """Only the key holder can mint these; the server still refuses what is not current."""
    codec = HandleCodec(load_or_create_key(served.state))
    root = codec.decode(genuine["root"])
    file = codec.decode(genuine["file"])
    stale = [
        codec.encode(root.export_id + 100, root.generation, root.fileid),
        codec.encode(root.export_id, root.generation + 1, file.fileid),
        codec.encode(root.export_id, root.generation - 1, file.fileid),
    ]
    for fh in stale:
        for call in (client.getattr(fh), client.read(fh, 0, 10), client.lookup(fh, "dir")):
            with pytest.raises(NfsError) as exc:
                await call
            assert exc.value.status == NfsStatus.STALE
    await served.server.unexport("/other")  # every handle of it is stale from now on
    for fh in (genuine["other"], genuine["x"]):
        with pytest.raises(NfsError) as exc:
            await client.getattr(fh)
        assert exc.value.status == NfsStatus.STALE
    assert await client.read(genuine["file"], 0, 4096) == (CONTENT, True)
