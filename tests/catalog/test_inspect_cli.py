"""``liverecovery inspect`` on a backup root, one VM folder and one OVA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from liverecovery.cli import main

MiB = 1 << 20


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_inventory_of_a_backup_root(
    backup_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = inspect(capsys, str(backup_root), "--json")
    assert code == 0
    report = json.loads(out)
    vms = {vm["name"]: vm for vm in report["vms"]}
    assert sorted(vms) == ["appliance", "db", "web01"]
    old, new = vms["db"]["restore_points"]
    assert (new["media"], new["archived"], new["passkey_required"]) == ("tape", True, True)
    assert (old["media"], old["archived"]) == ("disk", False)
    web_disks = vms["web01"]["restore_points"][0]["disks"]
    sparse, flat = web_disks
    assert (sparse["format"], sparse["virtual_bytes"]) == ("monolithicSparse", 10 * MiB)
    # qemu-io wrote 100000 bytes at 65000: grains 0..2 of 64 KiB are allocated
    assert sparse["allocated_bytes"] == 3 * 65536
    assert flat["format"] == "monolithicFlat"
    assert 0 < flat["allocated_bytes"] <= 6 * MiB
    (app,) = vms["appliance"]["restore_points"]
    assert [d["format"] for d in app["disks"]] == ["streamOptimized", "streamOptimized"]
    assert app["disks"][0]["allocated_bytes"] == 24 * MiB


def test_text_output_of_one_vm_folder(
    backup_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = inspect(capsys, str(backup_root / "web01"))
    assert code == 0
    assert out.splitlines()[0] == "web01"
    assert "scsi0:0" in out and "10.0 MiB virtual" in out and "pvscsi" in out


def test_one_ova(backup_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = inspect(capsys, str(backup_root / "appliance" / "appliance.ova"), "--json")
    assert code == 0
    (vm,) = json.loads(out)["vms"]
    assert vm["name"] == "appliance"
    assert vm["restore_points"][0]["memory_mb"] == 3072


def test_a_broken_vm_is_named_and_the_others_still_listed(
    tmp_path: Path, backup_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(backup_root / "web01", tmp_path / "web01")
    vm = tmp_path / "broken"
    vm.mkdir()
    (vm / "vm.vmx").write_text('scsi0:0.fileName = "gone.vmdk"\n')
    code, out, err = inspect(capsys, str(tmp_path), "--json")
    assert code == 1
    assert "VM broken" in err and "gone.vmdk" in err and "missing" in err
    vms = {vm["name"]: vm for vm in json.loads(out)["vms"]}
    assert "gone.vmdk" in vms["broken"]["error"]
    assert len(vms["web01"]["restore_points"]) == 1


def test_not_a_backup_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = inspect(capsys, str(tmp_path / "nowhere"))
    assert code == 1
    assert "the backup path does not exist" in err and "nowhere" in err
