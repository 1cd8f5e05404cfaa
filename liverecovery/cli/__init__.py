"""The ``liverecovery`` command.

Each subcommand lives next to the layer it drives and registers itself here through a
``register(subparsers)`` function that sets ``handler`` (an async function taking the parsed
arguments and returning an exit code) as a parser default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from liverecovery.errors import LiveRecoveryError

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], Awaitable[int]]
Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    from liverecovery.cli import browse, control, demo, inspect, recover, serve

    parser = argparse.ArgumentParser(
        prog="liverecovery",
        description="VMware Live Recovery: power a VM on from its backup over NFS.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (
        demo.register,
        control.register,
        serve.register,
        inspect.register,
        recover.register,
        browse.register,
    ):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    from liverecovery.cli.signals import exit_without_lingering, threads_now

    before = threads_now()
    try:
        code: Any = anyio.run(handler, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        exit_without_lingering(130, before)
        return 130
    except LiveRecoveryError as exc:
        print(f"liverecovery: error: {exc}", file=sys.stderr)
        exit_without_lingering(1, before)
        return 1
    # A worker thread still blocked in a call to a hung server must not keep us alive.
    exit_without_lingering(int(code), before)
    return int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
