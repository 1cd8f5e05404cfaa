"""What reading a .vmx ignores is said, with line numbers: garbage lines, disks that are no .vmdk."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from liverecovery.catalog.vm_config import config_from_vmx
from liverecovery.catalog.vmx import VmxFile

VMX = (
    "#!/usr/bin/vmware\n"
    '.encoding = "UTF-8"\n'
    "\n"
    "# a comment\n"
    'displayName = "web01"\n'
    "this line is garbage\n"
    'scsi0:0.fileName = "web01.vmdk"\n'
    'scsi0:1.fileName = "data.img"\n'
    'ide1:0.deviceType = "cdrom-image"\n'
    'ide1:0.fileName = "tools.iso"\n'
    '   "quoted" without a key\n'
)


def test_garbage_lines_are_warnings_with_their_line_numbers() -> None:
    vmx = VmxFile.parse(VMX)
    assert [(w.line, w.text) for w in vmx.warnings] == [
        (6, "this line is garbage"),
        (11, '"quoted" without a key'),
    ]
    assert "line 6: not a key = value line" in str(vmx.warnings[0])
    assert vmx.to_text() == VMX  # still kept verbatim


def test_a_disk_whose_file_is_no_vmdk_is_a_warning_and_a_cdrom_is_not() -> None:
    config = config_from_vmx(VmxFile.parse(VMX), path="web01.vmx")
    assert [d.key for d in config.disks] == ["scsi0:0"]
    assert "scsi0:1: disk file 'data.img' is not a .vmdk, skipped" in config.warnings
    assert not any("tools.iso" in w for w in config.warnings)
    assert sum("line" in w for w in config.warnings) == 2


@given(st.lists(st.sampled_from(['a = "1"', "# c", "", "junk", "  ", "= 5", "b=2"]), max_size=12))
def test_exactly_the_non_assignment_lines_warn(lines: list[str]) -> None:
    vmx = VmxFile.parse("\n".join(lines))
    expected = [i + 1 for i, line in enumerate(lines) if line in ("junk", "= 5")]
    assert [w.line for w in vmx.warnings] == expected
