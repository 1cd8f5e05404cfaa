"""Every command, given bad arguments, bad files and taken ports: one line on stderr naming the
problem (and where), a non-zero exit code, never a traceback.

Most cases call ``main()`` in-process (the console script is ``sys.exit(main())``; an exception
escaping it fails the test); the taken ports and a few others run the real process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liverecovery.cli import main
from liverecovery.testing.samples import sample_vm

MiB = 1 << 20

# Files the cases read; "{tmp}" is the test's folder.
FILES = {
    "trigger.toml": '[settings]\nmigration_trigger = "soon"\n',
    "block.toml": "[settings]\ncache_block_size = 0\n",
    "overlay.toml": "[settings]\nkeep_overlay = 1\n",
    "dup.toml": "[settings]\njournal = true\njournal = false\n",
    "flat.toml": 'cache_root = "/c"\n',
    "syntax.toml": "[settings\n",
    "binary.toml": "\udcff",
    "job-trigger.toml": 'vcenter = "vc"\n[settings]\nmigration_trigger = "soon"\n',
    "job-unknown.toml": 'vcenter = "vc"\nvcentre = "vc"\n',
    "job-bool.toml": 'insecure = "yes"\n',
    "job-port.toml": "nfs_port = 70000\n",
    "job-setting.toml": 'cache_root = "/c"\n',
}

RECOVER = [
    "--vm", "web01", "--vcenter", "127.0.0.1:9", "--user", "u", "--password-env",
    "LR_TEST_PW", "--host", "esx01", "--datastore", "ds1", "--esx-address", "127.0.0.1",
]  # fmt: skip

# (argv with {tmp}, exit code, what the one line must name)
CASES: list[tuple[str, int, tuple[str, ...]]] = [
    # demo
    ("demo --vm a/b", 2, ("--vm", "'a/b'")),
    ("demo --vm ..", 2, ("--vm",)),
    ("demo --disk-size lots", 1, ("--disk-size", "'lots'")),
    ("demo --disk-size 1K", 1, ("--disk-size", "at least 1M")),
    ("demo --serve-seconds -1", 2, ("--serve-seconds",)),
    ("demo --settings {tmp}/nope.toml", 1, ("nope.toml", "cannot read")),
    ("demo --settings {tmp}/trigger.toml", 1, ("trigger.toml", "migration_trigger", "'soon'")),
    ("demo --settings {tmp}/block.toml", 1, ("block.toml", "cache_block_size", "got 0")),
    ("demo --settings {tmp}/overlay.toml", 1, ("overlay.toml", "keep_overlay", "true or false")),
    ("demo --settings {tmp}/dup.toml", 1, ("dup.toml", "line 3", "'settings.journal'", "twice")),
    ("demo --settings {tmp}/flat.toml", 1, ("flat.toml", "'cache_root'", "[settings]")),
    ("demo --settings {tmp}/syntax.toml", 1, ("syntax.toml", "line 1", "invalid TOML")),
    ("demo --settings {tmp}/binary.toml", 1, ("binary.toml", "UTF-8")),
    ("demo --bogus", 2, ("unrecognized arguments", "--bogus")),
    # recover
    ("recover", 1, ("missing", "--vcenter", "--vm", "--datastore")),
    ("recover --job-file {tmp}/nope.toml", 1, ("nope.toml", "cannot read job file")),
    ("recover --job-file {tmp}/dup.toml", 1, ("dup.toml", "'settings.journal'", "twice")),
    ("recover --job-file {tmp}/job-trigger.toml", 1, ("job-trigger.toml", "migration_trigger")),
    ("recover --job-file {tmp}/job-unknown.toml", 1, ("job-unknown.toml", "'vcentre'")),
    ("recover --job-file {tmp}/job-bool.toml", 1, ("job-bool.toml", "insecure", "true or false")),
    ("recover --job-file {tmp}/job-port.toml", 1, ("job-port.toml", "nfs_port", "70000")),
    ("recover --job-file {tmp}/job-setting.toml", 1, ("'cache_root'", "[settings]")),
    ("recover --nfs-port 70000", 2, ("--nfs-port", "70000")),
    ("recover --portmap-port x", 2, ("--portmap-port",)),
    ("recover {tmp}/no-backup " + " ".join(RECOVER), 1, ("no-backup", "does not exist")),
    ("recover {tmp}/empty " + " ".join(RECOVER), 1, ("LR_TEST_PW", "not set")),
    ("recover {tmp}/empty --passkey-env LR_NO_KEY " + " ".join(RECOVER), 1, ("LR_NO_KEY",)),
    # resume
    ("resume", 1, ("missing", "--vcenter")),
    ("resume --job-file {tmp}/syntax.toml", 1, ("syntax.toml", "invalid TOML")),
    ("resume --nfs-port -5", 2, ("--nfs-port",)),
    # jobs / cancel
    ("jobs --job-results-dir {tmp}/none", 1, ("no liverecovery process answers", "none")),
    ("jobs --settings {tmp}/trigger.toml", 1, ("trigger.toml", "migration_trigger")),
    ("cancel job-1 --job-results-dir {tmp}/none", 1, ("no liverecovery process answers",)),
    ("cancel", 2, ("ID",)),
    # browse
    ("browse {tmp}/no-backup --allow 127.0.0.1", 1, ("no-backup", "does not exist")),
    ("browse {tmp}/empty --allow 127.0.0.1 --listen 127.0.0.1:0", 1, ("empty", "no VMs found")),
    ("browse {tmp}/backup --allow 127.0.0.1 --vm a/b", 1, ("'a/b'",)),
    ("browse {tmp}/backup --allow 127.0.0.1 --vm other", 1, ("no VM 'other'",)),
    ("browse {tmp}/backup --allow 127.0.0.1 --settings {tmp}/overlay.toml", 1, ("keep_overlay",)),
    ("browse {tmp}/backup --allow 127.0.0.1 --listen nowhere", 2, ("--listen", "HOST:PORT")),
    ("browse {tmp}/backup", 2, ("--allow",)),
    # inspect
    ("inspect {tmp}/no-backup", 1, ("no-backup", "does not exist")),
    ("inspect {tmp}/empty", 1, ("empty", "no VMs found", ".vmx")),
    ("inspect {tmp}/trigger.toml", 1, ("trigger.toml", "neither a folder nor an .ova")),
    ("inspect {tmp}/empty --json", 1, ("no VMs found",)),
    # serve
    ("serve {tmp}/no-dir --allow 127.0.0.1", 1, ("no-dir", "does not exist")),
    ("serve {tmp}/trigger.toml --allow 127.0.0.1", 1, ("trigger.toml", "not a directory")),
    ("serve {tmp}/empty --allow 127.0.0.1 --listen 1.2.3.4", 2, ("--listen",)),
    ("serve {tmp}/empty --allow 127.0.0.1 --portmap-port 99999", 2, ("--portmap-port",)),
    ("serve {tmp}/empty", 2, ("--allow",)),
    # passkey
    ("passkey --env LR_NO_SUCH_VAR", 1, ("LR_NO_SUCH_VAR", "not set")),
    ("passkey", 1, ("empty",)),  # stdin is empty
    # no command
    ("", 2, ("COMMAND",)),
    ("restore", 2, ("invalid choice", "'restore'")),
]


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8", errors="surrogateescape")
    (tmp_path / "empty").mkdir()
    sample_vm("web01", disk_sizes=(MiB,)).write(tmp_path / "backup")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("LR_TEST_PW", raising=False)
    return tmp_path


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


def assert_one_line(err: str, code: int, expected: int, names: tuple[str, ...]) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith("liverecovery"), line
    assert "internal error" not in line, line
    assert code == expected, line
    for name in names:
        assert name in line, (name, line)
    return line


@pytest.mark.parametrize(("argv", "expected", "names"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(
    tmp: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: str,
    expected: int,
    names: tuple[str, ...],
) -> None:
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115 - closed by pytest's gc
    code = run_main(argv.format(tmp=tmp).split())
    _, err = capsys.readouterr()
    assert_one_line(err, code, expected, names)


def cli(*argv: str, env: dict[str, str] | None = None, stdin: str = "") -> tuple[int, str, str]:
    """The real process: ``python -m liverecovery.cli ARGV``."""
    out = subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", *argv],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return out.returncode, out.stdout, out.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def recover_job(tmp: Path, **ports: int) -> list[str]:
    job = tmp / "job.toml"
    lines = [f"{key} = {value}" for key, value in ports.items()]
    job.write_text(
        "\n".join(lines)
        + f'\n[settings]\njob_results_dir = "{tmp}/results"\nnfs_listen_host = "127.0.0.1"\n'
    )
    return ["recover", str(tmp / "empty"), *RECOVER, "--job-file", str(job)]


PORT_CASES: list[tuple[str, Callable[[Path, int], list[str]], str]] = [
    (
        "serve --listen",
        lambda tmp, port: ["serve", str(tmp / "empty"), "--allow", "127.0.0.1", "--listen",
                           f"127.0.0.1:{port}", "--state-dir", str(tmp / "st")],
        "--listen HOST:PORT",
    ),
    (
        "serve --portmap-port",
        lambda tmp, port: ["serve", str(tmp / "empty"), "--allow", "127.0.0.1", "--listen",
                           "127.0.0.1:0", "--portmap-port", str(port), "--state-dir",
                           str(tmp / "st")],
        "--portmap-port",
    ),
    (
        "recover --nfs-port",
        lambda tmp, port: [*recover_job(tmp, portmap_port=0), "--nfs-port", str(port)],
        "--nfs-port or the nfs_port setting",
    ),
    (
        "recover portmap_port in the job file",
        lambda tmp, port: [*recover_job(tmp, nfs_port=0, portmap_port=port)],
        "--portmap-port or the portmap_port setting",
    ),
    (
        "browse --listen",
        lambda tmp, port: ["browse", str(tmp / "backup"), "--allow", "127.0.0.1", "--listen",
                           f"127.0.0.1:{port}", "--settings", str(tmp / "results.toml")],
        "--listen HOST:PORT",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("_name", "argv", "flag"), PORT_CASES, ids=[c[0] for c in PORT_CASES])
def test_a_taken_port_is_named_with_the_flag_that_moves_it(
    tmp: Path,
    taken_port: int,
    _name: str,
    argv: Callable[[Path, int], list[str]],
    flag: str,
) -> None:
    (tmp / "results.toml").write_text(f'[settings]\njob_results_dir = "{tmp}/results"\n')
    code, _, err = cli(*argv(tmp, taken_port), env={"LR_TEST_PW": "pw"})
    line = assert_one_line(err, code, 1, ())
    assert f"port {taken_port}" in line and "taken" in line and flag in line, line


def test_the_real_process_reports_a_settings_error_in_one_line(tmp: Path) -> None:
    code, _, err = cli("demo", "--settings", str(tmp / "trigger.toml"))
    assert_one_line(err, code, 1, ("trigger.toml", "migration_trigger"))


def test_an_unexpected_error_is_one_line_with_exit_70(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(_args: object) -> int:
        raise ZeroDivisionError("division by zero")

    from liverecovery.cli import inspect

    monkeypatch.setattr(inspect, "run", boom)
    code = run_main(["inspect", "."])
    _, err = capsys.readouterr()
    assert code == 70 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert "internal error: ZeroDivisionError: division by zero" in line
