"""The in-memory filesystem under a client's extreme sizes: sparse past the last written byte,
and its memory bounded (a WRITE at a huge offset is NOSPC, never a MemoryError)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs.filesystem import SetAttributes, Stability

pytestmark = pytest.mark.anyio

GiB = 1 << 30


async def new_file(fs: MemoryFilesystem) -> int:
    return await fs.create(fs.root_id, "f", SetAttributes())


async def test_a_write_at_a_huge_offset_is_nospc_and_allocates_nothing() -> None:
    fs = MemoryFilesystem(memory_limit=1 << 20)
    fid = await new_file(fs)
    with pytest.raises(NfsError) as raised:
        await fs.write(fid, 29 * GiB, b"x", Stability.FILE_SYNC)
    assert raised.value.status is NfsStatus.NOSPC
    assert (await fs.getattr(fid)).size == 0
    # An empty WRITE anywhere changes nothing (as pwrite of 0 bytes).
    await fs.write(fid, 29 * GiB, b"", Stability.FILE_SYNC)
    assert (await fs.getattr(fid)).size == 0


async def test_a_truncate_that_extends_is_sparse_and_reads_zeros() -> None:
    fs = MemoryFilesystem(memory_limit=1 << 20)
    fid = await new_file(fs)
    await fs.write(fid, 0, b"abc", Stability.FILE_SYNC)
    await fs.setattr(fid, SetAttributes(size=4 * GiB))  # a swap file's size, nothing held
    assert (await fs.getattr(fid)).size == 4 * GiB
    assert await fs.read(fid, 0, 8) == (b"abc" + bytes(5), False)
    assert await fs.read(fid, 4 * GiB - 4, 100) == (bytes(4), True)
    await fs.setattr(fid, SetAttributes(size=2))
    assert await fs.read(fid, 0, 100) == (b"ab", True)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("w"), st.integers(0, 5000), st.binary(max_size=300)),
            st.tuples(st.just("t"), st.integers(0, 6000), st.just(b"")),
        ),
        max_size=25,
    )
)
def test_memfs_agrees_with_a_bytearray_model(ops: list[tuple[str, int, bytes]]) -> None:
    import anyio

    async def run() -> None:
        fs = MemoryFilesystem(memory_limit=1 << 20)
        fid = await new_file(fs)
        model = bytearray()
        for kind, at, data in ops:
            if kind == "w":
                await fs.write(fid, at, data, Stability.FILE_SYNC)
                if data:
                    if at + len(data) > len(model):
                        model.extend(bytes(at + len(data) - len(model)))
                    model[at : at + len(data)] = data
            else:
                await fs.setattr(fid, SetAttributes(size=at))
                del model[at:]
                model.extend(bytes(at - len(model)))
            assert (await fs.getattr(fid)).size == len(model)
        got, eof = await fs.read(fid, 0, len(model) + 10)
        assert got == bytes(model) and eof

    anyio.run(run)
