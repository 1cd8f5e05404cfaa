"""The lifecycle as a Mermaid state diagram, generated from the transition table.

``mermaid()`` draws ``states.TRANSITIONS`` (rows with the same source, destination and guard
share one arrow, their triggers listed); the README carries its output between the
``<!-- states:begin -->`` and ``<!-- states:end -->`` markers, and a test fails when that copy
and the table disagree. ``python -m liverecovery.job.diagram README.md`` rewrites the block.
"""

from __future__ import annotations

import sys
from pathlib import Path

from liverecovery.job.states import TERMINAL_STATES, TRANSITIONS, State, Transition

__all__ = ["BEGIN", "END", "main", "mermaid", "readme_block", "splice"]

BEGIN = "<!-- states:begin -->"
END = "<!-- states:end -->"


def _guard(t: Transition) -> str:
    if t.conditions:
        return f" [{' and '.join(t.conditions)}]"
    if t.unless:
        return f" [not {' and '.join(t.unless)}]"
    return ""


def mermaid() -> str:
    """A Mermaid ``stateDiagram-v2`` of ``TRANSITIONS``, in table order."""
    arrows: dict[tuple[State, State, str], list[str]] = {}
    for t in TRANSITIONS:
        triggers = arrows.setdefault((t.source, t.dest, _guard(t)), [])
        if t.trigger not in triggers:
            triggers.append(t.trigger)
    lines = ["stateDiagram-v2", f"    [*] --> {State.CREATED}"]
    lines.extend(
        f"    {source} --> {dest}: {', '.join(triggers)}{guard}"
        for (source, dest, guard), triggers in arrows.items()
    )
    lines.extend(f"    {s} --> [*]" for s in sorted(TERMINAL_STATES))
    return "\n".join(lines)


def readme_block() -> str:
    """What goes between the markers: the diagram as a fenced ``mermaid`` block."""
    return f"{BEGIN}\n```mermaid\n{mermaid()}\n```\n{END}"


def splice(text: str) -> str:
    """``text`` with the block between the markers replaced by ``readme_block()``.

    :raises ValueError: the markers are missing or out of order.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return text[:start] + readme_block() + text[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the states block of each file named (the README); print the diagram if none."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(mermaid())
    for name in paths:
        path = Path(name)
        path.write_text(splice(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
