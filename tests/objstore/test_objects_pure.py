"""The pure parts of the object-storage catalog: URLs, where credentials come from, and what a
store failure means (no store needed)."""

from __future__ import annotations

import socket
from pathlib import Path

import obstore.exceptions as obs_errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.catalog.objects import (
    ObjectInfo,
    ObjectWindow,
    Outage,
    S3Location,
    StoreOptions,
    is_s3_url,
    open_store,
    store_credentials,
    store_error,
)
from liverecovery.catalog.opening import open_catalog
from liverecovery.config import Settings
from liverecovery.errors import BackupUnavailableError, CatalogError, NfsStatus


def test_urls() -> None:
    assert S3Location.parse("s3://backups") == S3Location("backups", "")
    assert S3Location.parse("s3://backups/a//b/") == S3Location("backups", "a/b")
    assert S3Location.parse("s3:/backups/a") == S3Location("backups", "a")  # as Path leaves it
    assert S3Location("b", "p/q").url() == "s3://b/p/q"
    assert S3Location("b", "p").url("p/x.vmdk") == "s3://b/p/x.vmdk"
    assert not is_s3_url("/srv/backups") and is_s3_url("s3://b")


@pytest.mark.parametrize("url", ["s3://", "s3:///x", "s3://a b/c", "s3://b/../etc", "/tmp/x"])
def test_bad_urls_name_themselves(url: str) -> None:
    with pytest.raises(CatalogError) as caught:
        S3Location.parse(url)
    assert str(caught.value).startswith(url + ": ")


@given(st.lists(st.text(alphabet="abc./-_", min_size=1, max_size=5), max_size=5))
def test_a_parsed_prefix_never_climbs(parts: list[str]) -> None:
    try:
        location = S3Location.parse("s3://bucket/" + "/".join(parts))
    except CatalogError:
        return
    assert ".." not in location.prefix.split("/")
    assert not location.prefix.startswith("/") and not location.prefix.endswith("/")


def test_credentials_environment_first_then_the_profile(tmp_path: Path) -> None:
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n"
        "[other]\naws_access_key_id = OTHER\naws_secret_access_key = othersecret\n"
    )
    (aws / "config").write_text(
        "[default]\nregion = eu-west-1\n[profile other]\nendpoint_url = https://s3.other\n"
    )
    home = {"HOME": str(tmp_path)}
    assert store_credentials(home) == {
        "access_key_id": "FILEKEY",
        "secret_access_key": "filesecret",
        "region": "eu-west-1",
    }
    env = home | {"AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_PROFILE": "other"}
    assert store_credentials(env) == {
        "access_key_id": "ENVKEY",
        "secret_access_key": "othersecret",
        "endpoint": "https://s3.other",
    }
    assert store_credentials({"HOME": str(tmp_path / "nowhere")}) == {}


def test_what_a_failure_means() -> None:
    url = "s3://b/k"
    missing = store_error(
        FileNotFoundError("Object at location k not found: ... 404 Not Found"), url
    )
    assert isinstance(missing, CatalogError) and "no such object" in str(missing)
    changed = store_error(obs_errors.PreconditionError("412 Precondition Failed"), url)
    assert isinstance(changed, CatalogError) and "changed since" in str(changed)
    denied = store_error(obs_errors.PermissionDeniedError("403 Forbidden"), url)
    assert isinstance(denied, CatalogError) and "access denied" in str(denied)
    down = store_error(obs_errors.GenericError("HTTP error: error sending request"), url)
    assert isinstance(down, BackupUnavailableError) and down.status is NfsStatus.JUKEBOX
    for error in (missing, changed, denied, down):
        assert str(error).startswith(url + ": ")


def test_open_catalog_picks_by_the_location(tmp_path: Path) -> None:
    assert isinstance(open_catalog(tmp_path), DirectoryCatalog)
    # settings.backup_root is a Path, which folds "s3://" to "s3:/"
    settings = Settings(backup_root="s3://backups/vms", s3_retries=1)
    assert settings.backup_root is not None
    catalog = open_catalog(settings.backup_root, settings)
    assert isinstance(catalog, ObjectCatalog)
    assert catalog.url == "s3://backups/vms"


def test_an_outage_is_waited_out_once_not_per_read() -> None:
    """After a read found the store down, the reads of the next ``hold_s`` fail at once without
    a request (JUKEBOX for the VM); after it, one read tries the store again."""
    accepted = 0
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.05)
        port = server.getsockname()[1]

        def drain() -> None:
            nonlocal accepted
            while True:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    return
                accepted += 1
                conn.close()  # a gateway that hangs up: no answer

        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k",
               "AWS_SECRET_ACCESS_KEY": "s", "HOME": "/nonexistent"}  # fmt: skip
        options = StoreOptions(retries=1, retry_timeout_s=2.0, request_timeout_s=2.0)
        store = open_store(S3Location("b"), options, env)
        outage = Outage(hold_s=3600.0)
        window = ObjectWindow(store, ObjectInfo("k", 100, '"e"'), "s3://b/k", outage=outage)
        with pytest.raises(BackupUnavailableError):
            window.pread(0, 10)
        drain()
        tried = accepted
        assert tried >= 1
        for _ in range(5):
            with pytest.raises(BackupUnavailableError, match="s3://b/k"):
                window.pread(0, 10)
        drain()
        assert accepted == tried  # no request while the outage holds
        outage.hold_s = 0.0
        outage.failed(BackupUnavailableError("down"))
        with pytest.raises(BackupUnavailableError):
            window.pread(0, 10)
        drain()
        assert accepted > tried  # the hold is over: the store was asked again
