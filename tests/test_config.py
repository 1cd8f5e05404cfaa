"""Settings: the seed's defaults, validation that names the setting, TOML loading."""

from __future__ import annotations

from pathlib import Path

import attrs
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
        ({"migration_trigger": "soon"}, "migration_trigger must be one of"),
        ({"keep_overlay": 1}, "keep_overlay must be true or false"),
        ({"journal": "yes"}, "journal must be true or false"),
        ({"cache_block_size": 0}, "cache_block_size must be a positive integer"),
        ({"compensation_attempts": 2.5}, "compensation_attempts"),
        ({"nfs_address": 5}, "nfs_address must be a string"),
        ({"restore_passkey": "scrypt$1"}, "restore_passkey must be a Passkey"),
        ({"timeouts": {"mount": 1}}, "timeouts must be a Timeouts"),
        ({"progress_interval_s": True}, "progress_interval_s"),
    ],
)
def test_bad_values_name_the_setting(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_toml_file(tmp_path: Path) -> None:
    key = Passkey.from_secret("k")
    path = tmp_path / "job.toml"
    path.write_text(
        f'[settings]\ncache_root = "{tmp_path}/c"\ncache_min_free_percent = 10\n'
        f'restore_passkey = "{key.encode()}"\n[settings.timeouts]\nmount = 5\n'
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
        ("[settings.timeouts]\nmoutn = 1\n", "unknown setting 'timeouts.moutn'"),
        ("[settings.timeouts]\nmount = -1\n", "timeouts.mount must be a positive number"),
        ("[settings.timeouts]\nmount = true\n", "timeouts.mount must be a positive number"),
        ("timeouts = 3\n", "timeouts must be a table"),
        ("cache_root = \n", "line 2: invalid TOML"),
        ('restore_passkey = "plain"\n', "passkey hash must look like"),
        ("restore_passkey = 5\n", "restore_passkey must be a string"),
        ('migration_trigger = "soon"\n', "migration_trigger must be one of 'read-rate'"),
        ("keep_overlay = 1\n", "keep_overlay must be true or false, got 1"),
        ("cache_block_size = 0\n", "cache_block_size must be a positive integer, got 0"),
        ("cache_root = 5\n", "cache_root must be a path string"),
        ("journal = true\njournal = false\n", "line 3: key 'settings.journal' is given twice"),
        ("journal = true\n[settings]\n", "line 3: table [settings] is declared twice"),
    ],
)
def test_bad_toml_names_file_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[settings]\n" + text)
    with pytest.raises(SettingsError) as caught:
        Settings.from_toml(path)
    assert str(path) in str(caught.value) and problem in str(caught.value)


def test_settings_outside_the_settings_table_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.toml"
    path.write_text('cache_root = "/c"\n')
    with pytest.raises(
        SettingsError, match=r"'cache_root' is a setting: put it under a \[settings\]"
    ):
        Settings.from_toml(path)
    assert Settings.from_toml(path, table=None).cache_root == Path("/c")


def test_a_file_without_settings_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('vm = "web01"\n')
    assert Settings.from_toml(path) == Settings()


def test_a_duplicate_key_at_the_end_of_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text("[settings]\nkeep_overlay = true\nkeep_overlay = false")  # no final newline
    with pytest.raises(SettingsError, match=r"line 3: key 'settings\.keep_overlay' is given twice"):
        Settings.from_toml(path)


_KEYS = st.sampled_from([*(a.name for a in attrs.fields(Settings)), "timeouts.mount", "nope"])
_VALUES = st.sampled_from(
    ["0", "1", "-1", "0.5", "1e400", "nan", "true", '"x"', '"delay"', "[]", "{}", "{mount = 0}", ""]
)


@given(st.lists(st.tuples(_KEYS, _VALUES), max_size=4), st.text(max_size=8))
def test_any_settings_table_gives_settings_or_one_settings_error(
    lines: list[tuple[str, str]], noise: str
) -> None:
    import tempfile

    text = "".join(f"{key} = {value}\n" for key, value in lines) + noise
    with tempfile.NamedTemporaryFile(
        "w", suffix=".toml", delete=False, encoding="utf-8", errors="replace"
    ) as f:
        f.write("[settings]\n" + text)
    try:
        Settings.from_toml(f.name)
    except SettingsError as exc:
        assert str(exc).startswith(f.name)
    finally:
        Path(f.name).unlink()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read settings"):
        Settings.from_toml(tmp_path / "nope.toml")


def test_backup_root_is_a_path_read_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[settings]\nbackup_root = "/backups/vms"\n')
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


@pytest.mark.parametrize("field", [f.name for f in attrs.fields(Settings)])
@pytest.mark.parametrize("value", [0, 1.5, "not a value", [1], {"a": 1}, True])
def test_every_setting_of_any_type_gives_settings_or_a_settings_error(
    field: str, value: object
) -> None:
    """Each setting, given a value of any TOML type: settings, or one SettingsError naming the
    setting; never an attrs TypeError (the property test above found one by chance)."""
    try:
        Settings.from_mapping({field: value}, source="test.toml")
    except SettingsError as exc:
        assert field in str(exc) or field.split("_")[0] in str(exc), exc
