"""``liverecovery demo --backup s3://bucket/prefix``: a recovery from the object store end to
end on the embedded environment; the migrated disk verified, the objects unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liverecovery.cli import main
from liverecovery.testing.objstore import RadosGateway, upload_tree
from liverecovery.testing.samples import sample_vm

pytestmark = pytest.mark.timeout(300)


def test_demo_recovers_a_backup_from_the_store(
    rgw: RadosGateway,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sample_vm("s3vm", disk_sizes=(64 << 20,), seed=7).write(tmp_path / "backup")
    upload_tree(rgw.store(), tmp_path / "backup", "demo")
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in rgw.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    settings = tmp_path / "settings.toml"
    # the shared test machine's disk may be nearly full: no free share kept for this run
    settings.write_text("[settings]\ncache_min_free_percent = 0\njob_space_floor_bytes = 0\n")
    code = main(
        ["demo", "--backup", rgw.url("demo"), "--json", "--serve-seconds", "0.2",
         "--settings", str(settings)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    result = json.loads(out.splitlines()[-1])
    assert code == 0, (result, err)
    assert result["state"] == "completed"
    assert result["verified"] is True
    assert result["backup_unchanged"] is True
    assert result["guest_bytes_written"] > 0
    assert result["backup_bytes_read_before_power_on"] > 0
    assert result["disk_size"] == 64 << 20
