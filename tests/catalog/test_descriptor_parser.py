"""The descriptor parser reads every formatting style descriptors are found in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from liverecovery.catalog.vmdk import ExtentType, parse_descriptor

names = st.text(
    st.characters(whitelist_categories=("L", "N"), whitelist_characters=" -_.()"), min_size=1
).filter(lambda s: s.strip() == s)
extent = st.tuples(
    st.sampled_from(["RW", "RDONLY"]),
    st.integers(1, 1 << 40),
    st.sampled_from([ExtentType.FLAT, ExtentType.VMFS, ExtentType.SPARSE, ExtentType.ZERO]),
    names,
    st.integers(0, 1 << 30),
)


@given(
    cid=st.integers(0, 0xFFFFFFFE).map(lambda n: f"{n:08x}"),
    parent=st.one_of(st.none(), names),
    extents=st.lists(extent, min_size=1, max_size=5),
    quote=st.booleans(),
    spaces=st.sampled_from(["", " ", "  \t"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    comments=st.booleans(),
    reverse=st.booleans(),
)
def test_styles(
    cid: str,
    parent: str | None,
    extents: list[tuple[str, int, ExtentType, str, int]],
    quote: bool,
    spaces: str,
    newline: str,
    comments: bool,
    reverse: bool,
) -> None:
    def kv(key: str, value: str) -> str:
        value = f'"{value}"' if quote else value
        return f"{key}{spaces}={spaces}{value}"

    header = [kv("version", "1"), kv("CID", cid), kv("createType", "custom")]
    if parent is not None:
        header += [kv("parentCID", "0badc0de"), f'parentFileNameHint="{parent}"']
    if reverse:
        header.reverse()
    lines = ["# Disk DescriptorFile", *header, "", "# Extent description"]
    for access, sectors, kind, name, offset in extents:
        if kind is ExtentType.ZERO:
            lines.append(f"{access} {sectors} ZERO")
        elif kind in (ExtentType.FLAT, ExtentType.VMFS):
            lines.append(f'{access} {sectors} {kind} "{name}" {offset}')
        else:
            lines.append(f'{access} {sectors} {kind} "{name}"')
        if comments:
            lines.append("   # a comment between extents")
    lines += ["", "#DDB", kv("ddb.adapterType", "lsilogic")]
    parsed = parse_descriptor(newline.join(lines) + newline)
    assert parsed.cid == cid
    assert parsed.create_type == "custom"
    assert parsed.parent_file_name == parent
    assert parsed.parent_cid == ("0badc0de" if parent is not None else "ffffffff")
    assert parsed.ddb["ddb.adaptertype"] == "lsilogic"
    got = [(e.access, e.sectors, e.type, e.file_name, e.offset_sectors) for e in parsed.extents]
    want = [
        (
            a,
            s,
            k,
            None if k is ExtentType.ZERO else n,
            o if k in (ExtentType.FLAT, ExtentType.VMFS) else 0,
        )
        for a, s, k, n, o in extents
    ]
    assert got == want
    assert parsed.capacity_bytes == sum(s for _, s, _, _, _ in extents) * 512


def test_unquoted_file_name_without_spaces() -> None:
    parsed = parse_descriptor("version=1\nRW 8 FLAT disk-flat.vmdk 0\n")
    assert parsed.extents[0].file_name == "disk-flat.vmdk"
