"""``liverecovery passkey``: the salted hash of a restore passkey, for the ``[settings]`` table.

The secret is read from standard input (a prompt on a terminal) or from an environment
variable, never from an argument (arguments show in ``ps`` and shell history). Only the hash is
printed; it goes into the settings as ``restore_passkey = "scrypt$..."``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from liverecovery.config import Passkey
from liverecovery.errors import SettingsError
from liverecovery.io.threads import run_sync

__all__ = ["read_secret", "register", "run"]


def register(sub: Any) -> None:
    """Add the ``passkey`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "passkey",
        help="print the hash of a restore passkey (the secret from stdin or --env VAR)",
        description="Print the restore_passkey hash for the [settings] table. The secret is "
        "read from standard input (one line; a prompt on a terminal) or from --env VAR.",
    )
    parser.add_argument("--env", metavar="VAR", help="environment variable holding the secret")
    parser.set_defaults(handler=run)


def read_secret(env: str | None) -> str:
    """The secret from ``env``, a terminal prompt or stdin's first line. :raises SettingsError:"""
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise SettingsError(f"--env: environment variable {env} is not set or empty")
        return value
    if sys.stdin.isatty():
        first = getpass.getpass("restore passkey: ")
        if first != getpass.getpass("again: "):
            raise SettingsError("passkey: the two entries differ")
        return first
    line = sys.stdin.readline()
    return line.removesuffix("\n").removesuffix("\r")


async def run(args: argparse.Namespace) -> int:
    secret = await run_sync(read_secret, args.env)
    if not secret:
        raise SettingsError("passkey: the secret is empty (give it on stdin or with --env VAR)")
    passkey = await run_sync(Passkey.from_secret, secret)
    print(passkey.encode())
    if sys.stdout.isatty():
        print('put it under [settings] as restore_passkey = "<the line above>"', file=sys.stderr)
    return 0
