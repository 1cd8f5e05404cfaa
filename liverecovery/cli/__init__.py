"""The ``liverecovery`` command.

Each subcommand lives next to the layer it drives and registers itself here through a
``register(subparsers)`` function that sets ``handler`` (an async function taking the parsed
arguments and returning an exit code) as a parser default.

A user never sees a traceback: a library error is one ``liverecovery: error: ...`` line (exit 1),
a bad argument one ``liverecovery CMD: error: ...`` line (exit 2), and anything unexpected one
``liverecovery: internal error: ...`` line (exit 70; ``LIVERECOVERY_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn

import anyio

from liverecovery.cli.ports import port_error
from liverecovery.errors import LiveRecoveryError

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], Awaitable[int]]
Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"

INTERNAL_ERROR = 70  # EX_SOFTWARE


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem and where help is, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    from liverecovery.cli import (
        browse,
        control,
        demo,
        inspect,
        passkey,
        plan,
        recover,
        serve,
        verify,
    )

    parser = _Parser(
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
        passkey.register,
        verify.register,
        plan.register,
    ):
        register(sub)
    return parser


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    from liverecovery.cli.signals import exit_without_lingering, threads_now
    from liverecovery.nfs.server import event_loop_options

    before = threads_now()
    try:
        code: Any = anyio.run(handler, args, backend_options=event_loop_options())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        exit_without_lingering(130, before)
        return 130
    except BaseException as exc:
        leaves = _leaves(exc)
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            print("interrupted", file=sys.stderr)
            exit_without_lingering(130, before)
            return 130
        if any(isinstance(leaf, SystemExit) for leaf in leaves):
            raise
        failed = _report(leaves, getattr(args, "port_flags", None))
        exit_without_lingering(failed, before)
        return failed
    # A worker thread still blocked in a call to a hung server must not keep us alive.
    exit_without_lingering(int(code), before)
    return int(code)


def _report(leaves: list[BaseException], port_flags: Mapping[int, str] | None) -> int:
    """Print one line for the first error (library errors first); the exit code.

    ``port_flags``: the flag or setting that moves each port the command listens on (a
    handler sets ``args.port_flags`` before it starts listening).
    """
    leaves.sort(key=lambda leaf: not isinstance(leaf, LiveRecoveryError))
    first = leaves[0]
    if isinstance(first, LiveRecoveryError):
        print(f"liverecovery: error: {first}", file=sys.stderr)
        return 1
    if isinstance(first, OSError) and (known := port_error(first, port_flags)) is not None:
        print(f"liverecovery: error: {known}", file=sys.stderr)
        return 1
    if os.environ.get("LIVERECOVERY_DEBUG"):
        traceback.print_exception(first)
    detail = str(first) or type(first).__name__
    print(
        f"liverecovery: internal error: {type(first).__name__}: {detail} "
        "(set LIVERECOVERY_DEBUG=1 for the traceback, and please report it)",
        file=sys.stderr,
    )
    return INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
