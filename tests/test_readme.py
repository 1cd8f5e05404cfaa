"""The README's Python example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README has no python example"
    # Its default job results folder (journal, session locks) goes to a temporary state home,
    # so concurrent test runs on one machine do not share (and contend for) the user's.
    out = subprocess.run(
        [sys.executable, "-c", match.group(1)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert "completed" in out.stdout.splitlines()[-1]


def test_readme_opens_with_the_two_setup_commands() -> None:
    block = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert block
    lines = block.group(1).strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("liverecovery demo") and "pytest" in lines[1]
    assert lines[1] in (README.parent / ".ci" / "run").read_text()
