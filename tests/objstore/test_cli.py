"""``inspect`` (and the other commands, through ``open_catalog``) on ``s3://bucket/prefix``:
the inventory as for a folder, and bad input as a clear error naming the URL, never a
traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import obstore
import pytest

from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.cli import main
from liverecovery.errors import CatalogError
from liverecovery.testing.objstore import RadosGateway, upload_tree

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def aws_env(rgw: RadosGateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The store's credentials in the environment only (no ~/.aws files)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in list(__import__("os").environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in rgw.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clear(err: str, url: str, *words: str) -> None:
    assert "Traceback" not in err
    assert url in err, err
    for word in words:
        assert word in err, err


@pytest.mark.usefixtures("aws_env")
def test_inventory_of_an_s3_prefix(forms_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = inspect(capsys, forms_url, "--json")
    assert code == 0, err
    (vm,) = json.loads(out)["vms"]
    assert vm["name"] == "forms"
    _old, new = vm["restore_points"]
    formats = [d["format"] for d in new["disks"]]
    assert formats == [
        "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
        "streamOptimized", "seSparse",
    ]  # fmt: skip
    sparse = new["disks"][0]
    assert sparse["virtual_bytes"] == 6 << 20
    assert sparse["allocated_bytes"] == 6 * 65536  # 300000 bytes at 65000 + 0: grains 0..5


@pytest.mark.usefixtures("aws_env")
def test_a_missing_bucket(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = inspect(capsys, "s3://no-such-bucket/backups")
    assert code != 0
    assert_clear(err, "s3://no-such-bucket/backups", "bucket does not exist")


@pytest.mark.usefixtures("aws_env")
def test_a_prefix_with_nothing_under_it(
    rgw: RadosGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = inspect(capsys, rgw.url("nothing-here"))
    assert code != 0
    assert_clear(err, rgw.url("nothing-here"), "nothing is stored")


@pytest.mark.usefixtures("aws_env")
def test_wrong_credentials(
    forms_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, _, err = inspect(capsys, forms_url)
    assert code != 0
    assert_clear(err, forms_url, "access denied", "AWS_SECRET_ACCESS_KEY")


@pytest.mark.usefixtures("aws_env")
def test_credentials_from_the_aws_files(
    rgw: RadosGateway,
    forms_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(key)
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        f"[backup]\naws_access_key_id = {rgw.env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {rgw.env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    (aws / "config").write_text(
        f"[profile backup]\nregion = us-east-1\nendpoint_url = {rgw.endpoint}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "backup")
    code, out, err = inspect(capsys, forms_url, "--json")
    assert code == 0, err
    assert json.loads(out)["vms"][0]["name"] == "forms"


@pytest.mark.usefixtures("aws_env")
def test_an_unreachable_endpoint(
    forms_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    code, _, err = inspect(capsys, forms_url)
    assert code != 0
    assert_clear(err, forms_url, "did not answer")


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize("url", ["s3://", "s3://b/../x", "s3://a b/c"])
def test_a_malformed_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = inspect(capsys, url)
    assert code != 0
    assert "Traceback" not in err and url in err


@pytest.mark.usefixtures("aws_env")
def test_a_missing_extent_object(
    rgw: RadosGateway, every_form: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    point = every_form / "forms" / "forms-2025-03-02_22-00-00"
    upload_tree(rgw.store(), point, "missing-extent/vm")
    obstore.delete(rgw.store(), "missing-extent/vm/sparse.vmdk")
    code, _, err = inspect(capsys, rgw.url("missing-extent"))
    assert code != 0
    assert_clear(err, rgw.url("missing-extent/vm/sparse.vmdk"), "missing")


@pytest.mark.anyio
async def test_an_object_changed_since_the_catalog_read_it(
    rgw: RadosGateway, every_form: Path
) -> None:
    point = every_form / "forms" / "forms-2025-03-02_22-00-00"
    upload_tree(rgw.store(), point, "changed/vm")
    async with ObjectCatalog(rgw.url("changed"), environ=rgw.environ()) as catalog:
        restore = await catalog.restore_point("vm")
        flat = next(d for d in restore.disks if d.file_name == "flat.vmdk")
        reader = await catalog.open_disk(restore, flat)
        try:
            assert len(await reader.read(0, 4096)) == 4096
            extent = "changed/vm/flat-flat.vmdk"
            size = obstore.head(rgw.store(), extent)["size"]
            obstore.put(rgw.store(), extent, b"\x01" * size)  # same size, other bytes
            with pytest.raises(CatalogError) as caught:
                await reader.read(0, 4096)
        finally:
            await reader.aclose()
    assert "s3://backups/changed/vm/flat-flat.vmdk" in str(caught.value)
    assert "changed since the catalog read it" in str(caught.value)
