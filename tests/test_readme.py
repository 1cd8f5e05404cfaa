"""The README as written: its Python examples type-check and run, its set-up commands are CI's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUNS = "<!-- example: runs -->"


def python_blocks() -> list[tuple[bool, str]]:
    """(marked runnable, code) of every ```python block, in order."""
    found = re.finditer(
        r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", README.read_text(), re.S
    )
    return [(m["before"].strip() == RUNS, m["code"]) for m in found]


def test_the_readme_has_a_runnable_example_and_another() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert [runs for runs, _ in blocks].count(True) == 1


def test_readme_python_example_runs(tmp_path: Path) -> None:
    (code,) = [code for runs, code in python_blocks() if runs]
    # Its default job results folder (journal, session locks) goes to a temporary state home,
    # so concurrent test runs on one machine do not share (and contend for) the user's.
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    last = out.stdout.splitlines()[-1]
    # states print as plain strings, not Enum reprs
    assert last.startswith("completed ('created', 'preflight',"), last
    assert "<State." not in out.stdout


@pytest.mark.timeout(600)
def test_every_readme_python_block_passes_mypy_strict(tmp_path: Path) -> None:
    files = []
    for index, (_, code) in enumerate(python_blocks()):
        path = tmp_path / f"readme_block_{index}.py"
        path.write_text(code)
        files.append(str(path))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_opens_with_the_two_setup_commands() -> None:
    block = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert block
    lines = block.group(1).strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("liverecovery demo") and "pytest" in lines[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    # CI runs both, verbatim, each as a line of its own
    assert lines[0] in ci and lines[1] in ci
