"""The README's state diagram is the one generated from the transition table."""

from __future__ import annotations

from pathlib import Path

import pytest

from liverecovery.job.diagram import BEGIN, END, main, mermaid, readme_block, splice
from liverecovery.job.states import TRANSITIONS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_shows_the_diagram_of_the_table() -> None:
    text = README.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert splice(text) == text, (
        "README.md's states block is stale: python -m liverecovery.job.diagram README.md"
    )
    assert readme_block() in text


def test_every_transition_has_an_arrow() -> None:
    lines = mermaid().splitlines()
    assert lines[0] == "stateDiagram-v2"
    for t in TRANSITIONS:
        (arrow,) = [ln for ln in lines if ln.strip().startswith(f"{t.source} --> {t.dest}:")]
        assert t.trigger in arrow.split(":", 1)[1]


def test_splice_replaces_only_the_block(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(f"before\n{BEGIN}\nold\n{END}\nafter\n")
    assert main([str(path)]) == 0
    assert path.read_text() == f"before\n{readme_block()}\nafter\n"
    with pytest.raises(ValueError, match="states:begin"):
        splice("no markers")
