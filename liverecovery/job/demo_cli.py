"""``liverecovery demo``: one complete recovery job on the embedded default backends."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser("demo", help="run one complete recovery job")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Run the demo job (placeholder until the lifecycle lands)."""
    return 0
