"""Declared XDR messages: values generated from each message's own spec survive pack + unpack,
and every truncation or hostile length is an ``XdrError``, never another exception."""

from __future__ import annotations

import contextlib
import inspect
import struct
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.errors import NfsStatus
from liverecovery.nfs import mount_codec as mnt
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs import portmap_codec as pm
from liverecovery.nfs import xdr_spec as xs
from liverecovery.nfs.filesystem import Stability
from liverecovery.nfs.xdr import Packer, Unpacker, XdrError

_NS = 1_000_000_000
_WORDS = {"I": (0, 2**32 - 1), "i": (-(2**31), 2**31 - 1), "Q": (0, 2**64 - 1), "q": (-(2**63), 2**63 - 1)}  # fmt: skip


def strategy(t: xs.XdrType) -> st.SearchStrategy[Any]:
    """Values of wire type ``t`` (small: a few list items, short opaques)."""
    if isinstance(t, xs.Word):
        return st.integers(*_WORDS[t.fmt])
    if t is xs.MASKED_U32:
        return st.integers(0, 2**32 - 1)
    if isinstance(t, xs.Bool):
        return st.booleans()
    if isinstance(t, xs.Enum):
        return st.sampled_from(list(t.cls))
    if isinstance(t, xs.Time):
        return st.builds(
            lambda s, n: s * _NS + n, st.integers(0, 2**32 - 1), st.integers(0, _NS - 1)
        )
    if isinstance(t, xs.Fixed):
        return st.binary(min_size=t.n, max_size=t.n)
    if isinstance(t, xs.String):
        return st.text(max_size=20).filter(
            lambda s: len(s.encode("utf-8", "surrogateescape")) <= t.bound
        )
    if isinstance(t, xs.Opaque):
        return st.binary(max_size=min(t.bound, 70))
    if isinstance(t, xs.Optional):
        return st.none() | strategy(t.of)
    if isinstance(t, xs.Choice):
        return st.one_of(
            *(st.just(a.value) if isinstance(a, xs.Const) else strategy(a) for a in t.arms.values())
        )
    if isinstance(t, xs.Tuple):
        return st.tuples(*map(strategy, t.items))
    if isinstance(t, xs.Array):
        return st.lists(strategy(t.of), max_size=min(t.bound, 4)).map(tuple)
    if isinstance(t, xs.List):
        return st.lists(strategy(t.of), max_size=3).map(t.container)
    if isinstance(t, xs.Record):
        return _record(t)
    raise AssertionError(f"no strategy for {t!r}")


def _record(r: xs.Record) -> st.SearchStrategy[Any]:
    @st.composite
    def build(draw: st.DrawFn) -> Any:
        values: dict[str, Any] = {}
        for f in r.fields:
            if f.name is None:
                continue
            if f.when is not None:
                tested = values[f.when.field]
                present = tested in f.when.values
                if present == isinstance(f.when, xs.Unless):
                    continue  # absent on the wire: the attribute keeps its default
            values[f.name] = draw(strategy(f.type))
        return r.cls(**values)

    return build()


def _declared(*modules: object) -> list[type[Any]]:
    return [
        cls
        for m in modules
        for _, cls in inspect.getmembers(m, inspect.isclass)
        if "__xdr__" in cls.__dict__ and cls.__module__ == m.__name__  # type: ignore[attr-defined]
    ]


DECLARED = _declared(n3, mnt, pm)
CODECS = {
    "fattr3": (n3.FATTR3, ("fsid",)),
    "post_op_attr": (n3.POST_OP_ATTR, ("fsid",)),
    "sattr3": (n3.SATTR3, ()),
    "post_op_fh3": (n3.POST_OP_FH, ()),
    "mountlist": (xs.List(xs.spec(mnt.MountEntry), 10, "too long"), ()),
    "exports": (xs.List(xs.spec(mnt.MountExport), 10, "too long"), ()),
}


def _context(cls: type[Any]) -> tuple[int, ...]:
    pack = getattr(cls, "pack", None)
    if pack is None:
        return ()
    return tuple(42 for _ in list(inspect.signature(pack).parameters)[2:])


def _codec_of(cls: type[Any]) -> tuple[Any, Any, tuple[int, ...]]:
    """pack(p, value, *context) and unpack(u) of a declared class (nested-only ones too)."""
    if hasattr(cls, "pack"):
        context = _context(cls)
        return (lambda p, v, *c: v.pack(p, *c)), cls.unpack, context
    c = xs.codec(xs.spec(cls), ("fsid",))  # nested only: packed inside results
    return c.pack, c.unpack, (42,)


def _round_trip_and_truncations(
    pack: Any, unpack: Any, value: Any, context: tuple[int, ...]
) -> None:
    p = Packer()
    pack(p, value, *context)
    data = p.getvalue()
    assert len(data) % 4 == 0 and len(data) == len(p)
    u = Unpacker(data)
    assert unpack(u) == value
    assert u.remaining == 0
    for cut in range(len(data)):
        with pytest.raises(XdrError):
            unpack(Unpacker(data[:cut]))


def test_every_message_class_is_covered() -> None:
    names = {c.__name__ for c in DECLARED}
    assert {"GetattrRes", "LookupRes", "ReaddirplusRes", "CreateArgs", "MknodArgs"} <= names
    assert {"MountRes", "MountExport", "Mapping", "Wcc", "WccAttr", "EntryPlus"} <= names
    assert len(DECLARED) >= 38


@pytest.mark.parametrize("cls", DECLARED, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_declared_message_round_trips(cls: type[Any], data: st.DataObject) -> None:
    value = data.draw(strategy(xs.spec(cls)))
    _round_trip_and_truncations(*_codec_of(cls)[:2], value, _codec_of(cls)[2])


@pytest.mark.parametrize("name", sorted(CODECS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_declared_type_round_trips(name: str, data: st.DataObject) -> None:
    t, context = CODECS[name]
    c = xs.codec(t, context)
    _round_trip_and_truncations(c.pack, c.unpack, data.draw(strategy(t)), (42,) * len(context))


@settings(max_examples=60, deadline=None)
@given(
    st.binary(min_size=8, max_size=8),
    st.booleans(),
    st.binary(max_size=3000),
    st.sampled_from(Stability),
    st.none() | strategy(n3.FATTR3),
)
def test_hand_written_messages_round_trip(
    fh: bytes, eof: bool, data: bytes, stable: Stability, a: Any
) -> None:
    """WriteArgs and ReadRes (zero-copy data) keep their own code: same properties."""
    w = n3.WriteArgs(fh, 7, stable, data)
    r = n3.ReadRes(NfsStatus.OK, a, eof, data)
    for value, context in ((w, ()), (r, (42,))):
        p = Packer()
        value.pack(p, *context)
        wire = p.getvalue()
        back = type(value).unpack(Unpacker(wire))
        assert back == value and bytes(back.data) == data
        for cut in range(0, len(wire), 3):
            with pytest.raises(XdrError):
                type(value).unpack(Unpacker(wire[:cut]))


@pytest.mark.parametrize("cls", [*DECLARED, n3.WriteArgs, n3.ReadRes], ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_xdr_error_or_a_message(cls: type[Any], garbage: bytes) -> None:
    unpack = _codec_of(cls)[1]
    with contextlib.suppress(XdrError):
        unpack(Unpacker(garbage))


@pytest.mark.parametrize(
    ("cls", "prefix", "message"),
    [
        (n3.FhArgs, b"", "length 4294967295 > 64"),
        (n3.DiropArgs, struct.pack(">I", 4) + b"\1\2\3\4", "length 4294967295 > 1024"),
        (n3.WriteArgs, struct.pack(">I", 0) + struct.pack(">QII", 0, 1, 0), "> 1048576"),
        (mnt.MountRes, struct.pack(">II", 0, 0), "array at byte 8 has length 4294967295 > 64"),
        (n3.SymlinkArgs, struct.pack(">II", 0, 0) + b"\0" * 24, "length 4294967295 > 4096"),
    ],
)
def test_hostile_lengths_are_refused_not_allocated(
    cls: type[Any], prefix: bytes, message: str
) -> None:
    with pytest.raises(XdrError, match=message):
        cls.unpack(Unpacker(prefix + struct.pack(">I", 0xFFFFFFFF)))


def test_linked_lists_are_bounded() -> None:
    entry = struct.pack(">IQI", 1, 5, 0) + struct.pack(">Q", 9)  # follows, fileid, "", cookie
    head = struct.pack(">II", NfsStatus.OK, 0) + b"\0" * 8
    wire = head + entry * (n3._MAX_ENTRIES + 1) + struct.pack(">II", 0, 1)
    with pytest.raises(XdrError, match="too many entries"):
        n3.ReaddirRes.unpack(Unpacker(wire))
    with pytest.raises(XdrError, match="bool at byte 16 is 2"):
        n3.ReaddirRes.unpack(Unpacker(head + struct.pack(">I", 2)))


def test_invalid_discriminants_are_refused() -> None:
    with pytest.raises(XdrError, match="nfsstat3: unknown value 12345"):
        n3.GetattrRes.unpack(Unpacker(struct.pack(">I", 12345)))
    with pytest.raises(XdrError, match="ftype3: invalid value 9"):
        n3.GetattrRes.unpack(Unpacker(struct.pack(">II", 0, 9) + b"\0" * 80))
    sattr_bad_time = struct.pack(">IIIII", 0, 0, 0, 0, 3)
    with pytest.raises(XdrError, match="time_how: invalid value 3"):
        n3.unpack_sattr(Unpacker(sattr_bad_time))
    with pytest.raises(XdrError, match="mountstat3: unknown value 3"):
        mnt.MountRes.unpack(Unpacker(struct.pack(">I", 3)))


def test_generated_methods_pack_what_they_declare() -> None:
    """The fixed-size tail of a result is one struct: fattr3 plus status in one pack call."""
    source = n3.GetattrRes.pack.__xdr_source__  # type: ignore[attr-defined]
    assert source.count(".pack(") == 2  # OK with its fattr3, or the status alone
    assert attrs.has(n3.GetattrRes) and xs.spec(n3.GetattrRes).cls is n3.GetattrRes
    assert pm.Mapping.unpack(Unpacker(struct.pack(">IIII", 1, 2, 6, 111))) == pm.Mapping(
        1, 2, 6, 111
    )
