"""``inspect`` says what it ignored in a .vmx: garbage lines (with line numbers) and disks whose
file is no .vmdk, one warning line each on stderr; the inventory still lists the VM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liverecovery.cli import main
from liverecovery.testing.samples import sample_vm


def test_inspect_warns_about_garbage_lines_and_non_vmdk_disks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample_vm("web01", disk_sizes=(1 << 20,)).write(tmp_path)
    (vmx,) = (tmp_path / "web01").rglob("*.vmx")
    lines = vmx.read_text().splitlines()
    garbage_at = len(lines) + 1
    vmx.write_text(
        "\n".join([*lines, "oops this is not a setting", 'sata0:3.fileName = "x.img"\n'])
    )

    code = main(["inspect", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    warnings = err.strip().splitlines()
    assert len(warnings) == 2, err
    assert all(w.startswith("liverecovery: warning: web01 ") for w in warnings)
    assert f"line {garbage_at}: not a key = value line" in warnings[0]
    assert "sata0:3: disk file 'x.img' is not a .vmdk, skipped" in warnings[1]
    (vm,) = json.loads(out)["vms"]
    (point,) = vm["restore_points"]
    assert len(point["disks"]) == 1 and len(point["warnings"]) == 2
