"""A plan's table, updating in place while it runs: in Jupyter a display that is replaced, on a
terminal redrawn with ANSI cursor moves.

    run = await lr.run_plan(plan)
    await show_plan(run)  # in a notebook cell: the table updates; returns when the plan ends
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, TextIO

import anyio

from liverecovery.plan.runner import PlanRun
from liverecovery.plan.table import format_table

__all__ = ["show_plan"]


def _notebook() -> Any | None:
    """``IPython.display`` when running in a notebook kernel, else None (IPython is optional:
    imported by name, only when present)."""
    try:
        ipython = importlib.import_module("IPython")
        display = importlib.import_module("IPython.display")
    except ImportError:
        return None
    shell = ipython.get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    return display


async def show_plan(
    run: PlanRun, *, file: TextIO | None = None, interval_s: float = 0.5
) -> dict[str, Any]:
    """Show the plan's table until it ends, then its summary (returned). In a notebook kernel
    one display is created and updated in place (``update_display_data``); elsewhere the table
    is redrawn on ``file`` (default stdout). Looked at every ``interval_s``; sent only when it
    changed, so a long plan does not flood the notebook or the terminal."""
    notebook = _notebook()
    out = file or sys.stdout
    handle = None
    drawn = 0
    shown = ""
    while True:
        text = "\n".join(format_table(run.rows()))
        if text != shown:
            shown = text
            if notebook is not None:
                if handle is None:
                    handle = notebook.display(notebook.Pretty(text), display_id=True)
                else:
                    handle.update(notebook.Pretty(text))
            else:
                if drawn:
                    out.write(f"\x1b[{drawn}F\x1b[J")
                out.write(text + "\n")
                out.flush()
                drawn = text.count("\n") + 1
        if run.done:
            return await run.wait()
        with anyio.move_on_after(interval_s):
            await run.wait()
