"""Settings: the seed's defaults, validation that names the setting, TOML loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery import Passkey, Settings, SettingsError
from liverecovery.config import GiB


def test_defaults_follow_the_seed(tmp_path: Path) -> None:
    s = Settings(job_results_dir=tmp_path)
    assert s.cache_min_free_percent == 5.0
    assert s.effective_cache_root == tmp_path / "3dfs-cache"
    assert s.job_space_bytes(0) == 20 * GiB
    assert s.job_space_bytes(100 * GiB) == 20 * GiB
    assert s.job_space_bytes(1000 * GiB) == 150 * GiB
    assert s.cache_block_size == 1 << 20


@given(st.integers(0, 1 << 50))
def test_job_space_is_the_larger_of_floor_and_fraction(vm_bytes: int) -> None:
    need = Settings().job_space_bytes(vm_bytes)
    assert need >= 20 * GiB and need >= 0.15 * vm_bytes
    assert need in (20 * GiB, -(-15 * vm_bytes // 100))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"cache_min_free_percent": 150}, "cache_min_free_percent"),
        ({"cache_min_free_percent": float("nan")}, "cache_min_free_percent"),
        ({"job_space_fraction": -0.1}, "job_space_fraction"),
        ({"job_space_floor_bytes": -1}, "job_space_floor_bytes"),
        ({"nfs_port": 70000}, "nfs_port"),
        ({"compensation_attempts": 0}, "compensation_attempts"),
        ({"cache_max_open_files": 0}, "cache_max_open_files"),
        ({"cache_max_open_files": True}, "cache_max_open_files"),
    ],
)
def test_bad_values_name_the_setting(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_toml_file(tmp_path: Path) -> None:
    key = Passkey.from_secret("k")
    path = tmp_path / "job.toml"
    path.write_text(
        f'cache_root = "{tmp_path}/c"\ncache_min_free_percent = 10\n'
        f'restore_passkey = "{key.encode()}"\n[timeouts]\nmount = 5\n'
    )
    s = Settings.from_toml(path)
    assert s.effective_cache_root == tmp_path / "c"
    assert s.cache_min_free_percent == 10 and s.timeouts.mount == 5
    assert s.restore_passkey is not None and s.restore_passkey.matches("k")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cache_min_free_percnt = 5\n", "unknown setting 'cache_min_free_percnt'"),
        ("cache_min_free_percent = 500\n", "cache_min_free_percent must be a percentage"),
        ("[timeouts]\nmoutn = 1\n", "unknown setting 'timeouts.moutn'"),
        ("[timeouts]\nmount = -1\n", "timeouts.mount must be a positive number"),
        ("timeouts = 3\n", "timeouts must be a table"),
        ("cache_root = \n", "invalid TOML"),
        ('restore_passkey = "plain"\n', "passkey hash must look like"),
    ],
)
def test_bad_toml_names_file_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        Settings.from_toml(path)
    assert str(path) in str(caught.value) and problem in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read settings"):
        Settings.from_toml(tmp_path / "nope.toml")


def test_backup_root_is_a_path_read_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('backup_root = "/backups/vms"\n')
    assert Settings.from_toml(path).backup_root == Path("/backups/vms")
    assert Settings().backup_root is None


def test_from_settings_needs_a_catalog_or_a_backup_root(tmp_path: Path) -> None:
    import anyio

    from liverecovery import LiveRecovery
    from liverecovery.testing import memory_backends

    backends, _ = memory_backends()

    async def main() -> None:
        settings = Settings(job_results_dir=tmp_path / "results", nfs_port=0, portmap_port=0)
        with pytest.raises(SettingsError, match="backup_root"):
            async with LiveRecovery.from_settings(settings, vsphere=backends.vsphere):
                pass

    anyio.run(main)
