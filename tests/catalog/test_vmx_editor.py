"""The .vmx editor round-trips real-looking files byte for byte and edits them precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.catalog.vmx import VmxFile, vmx_escape, vmx_unescape

DATA = Path(__file__).parent / "data"
CORPUS = sorted(DATA.glob("*.vmx"))


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 3


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_unchanged_round_trip_is_byte_for_byte(path: Path) -> None:
    data = path.read_bytes()
    assert VmxFile.parse(data).to_bytes() == data


def test_values_and_case_insensitive_keys() -> None:
    vmx = VmxFile.parse((DATA / "esxi7-linux.vmx").read_bytes())
    assert vmx.get("DISPLAYNAME") == "web01"
    assert vmx["memsize"] == "4096"
    assert vmx.get("scsi0:1.FILENAME") == "web01_1.vmdk"
    assert vmx.get("annotation") == 'Web frontend\nOwner: ops|web team\nSee "runbook 12"'
    assert "ethernet0.generatedaddress" in vmx
    assert vmx.get("missing", "d") == "d"
    assert vmx.with_prefix("ethernet0.")["ethernet0.networkname"] == "VM Network"


def test_last_assignment_wins_and_bare_values() -> None:
    vmx = VmxFile.parse((DATA / "hand-edited.vmx").read_bytes())
    assert vmx.get("memsize") == "3072"
    assert vmx.get("config.version") == "8"
    assert vmx.get("uuid.bios", "").endswith("66 77")  # no newline at the end of the file
    assert vmx.keys().count("MemSize") == 1


def test_non_utf8_bytes_survive_edits() -> None:
    data = (DATA / "windows-crlf.vmx").read_bytes()
    vmx = VmxFile.parse(data)
    vmx.set("memsize", "8192")
    out = vmx.to_bytes()
    assert b'memsize = "8192"\r\n' in out
    assert b"Ren\xe9 M\xfcller" in out
    assert out.replace(b'memsize = "8192"', b'memsize = "16384"') == data


def test_set_keeps_spelling_and_spacing_and_only_touches_one_line() -> None:
    data = (DATA / "hand-edited.vmx").read_bytes()
    vmx = VmxFile.parse(data)
    vmx.set("CONFIG.VERSION", "9")
    out = vmx.to_bytes()
    assert b'config.version   =   "9"\n' in out
    assert out.replace(b'=   "9"', b'=   "8"') == data


def test_add_to_file_without_final_newline() -> None:
    vmx = VmxFile.parse((DATA / "hand-edited.vmx").read_bytes())
    vmx.set("workingDir", "/vmfs/volumes/ds1/legacy app")
    out = vmx.to_bytes()
    assert out.endswith(b'66 77"\nworkingDir = "/vmfs/volumes/ds1/legacy app"\n')
    assert VmxFile.parse(out).get("WORKINGDIR") == "/vmfs/volumes/ds1/legacy app"


def test_add_uses_crlf_in_crlf_files() -> None:
    vmx = VmxFile.parse((DATA / "windows-crlf.vmx").read_bytes())
    vmx.set("sched.swap.dir", 'C:|"x"')
    assert vmx.to_bytes().endswith(b'sched.swap.dir = "C:|7C|22x|22"\r\n')
    assert VmxFile.parse(vmx.to_bytes()).get("sched.swap.dir") == 'C:|"x"'


def test_remove_every_assignment() -> None:
    vmx = VmxFile.parse((DATA / "hand-edited.vmx").read_bytes())
    assert vmx.remove("MEMSIZE")
    assert "memsize" not in vmx
    assert not vmx.remove("memsize")
    assert b"emSize" not in vmx.to_bytes().replace(b"3072", b"")


keys = st.from_regex(r"[A-Za-z][A-Za-z0-9_.:]{0,20}", fullmatch=True)
values = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), keys, values), max_size=25), st.sampled_from(CORPUS))
def test_edits_match_a_case_insensitive_dict(ops: list[tuple[bool, str, str]], path: Path) -> None:
    vmx = VmxFile.parse(path.read_bytes())
    model = {k.lower(): v for k, v in vmx.items()}
    for is_set, key, value in ops:
        if is_set:
            vmx.set(key, value)
            model[key.lower()] = value
        else:
            assert vmx.remove(key) == (key.lower() in model)
            model.pop(key.lower(), None)
    again = VmxFile.parse(vmx.to_bytes())
    assert {k.lower(): v for k, v in again.items()} == model


@given(values)
def test_escape_round_trip(value: str) -> None:
    escaped = vmx_escape(value)
    assert '"' not in escaped
    assert "\n" not in escaped
    assert vmx_unescape(escaped) == value


@given(st.text(max_size=200))
def test_any_text_round_trips(text: str) -> None:
    assert VmxFile.parse(text).to_text() == text
