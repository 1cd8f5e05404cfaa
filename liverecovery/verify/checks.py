"""The checks a backup verification runs, and what each found.

A check is a value (``Check``), written on the command line as ``heartbeat``, ``ip``,
``tcp:22``, ``guest-command:/usr/bin/systemctl is-system-running``, ``screenshot`` or
``partitions``; each has a timeout and says whether the verification needs it to pass
(``required``). Each run gives a ``CheckResult``. Pure: the running is ``verify.run``'s.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import attrs

from liverecovery.errors import SettingsError

__all__ = [
    "DEFAULT_TIMEOUTS",
    "GUEST_KINDS",
    "KINDS",
    "Check",
    "CheckResult",
    "Outcome",
    "default_checks",
    "in_run_order",
    "parse_check",
]

KINDS = ("partitions", "heartbeat", "ip", "tcp", "guest-command", "screenshot")
"""Every kind of check, in the order a verification runs them."""

GUEST_KINDS = frozenset({"heartbeat", "ip", "tcp", "guest-command", "screenshot"})
"""The checks that need the VM powered on (``partitions`` reads the backup only)."""

DEFAULT_TIMEOUTS: dict[str, float] = {
    "partitions": 300.0,
    "heartbeat": 600.0,
    "ip": 300.0,
    "tcp": 120.0,
    "guest-command": 300.0,
    "screenshot": 60.0,
}
"""Seconds each kind may take by default (a heartbeat waits for a whole boot)."""


class Outcome(enum.StrEnum):
    """How a check ended."""

    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"


@attrs.frozen
class Check:
    """One check: its kind, its argument (``tcp``: the port; ``guest-command``: the program
    and its arguments), whether the verification needs it, and its timeout in seconds."""

    kind: str = attrs.field()
    argument: str = ""
    required: bool = attrs.field(
        default=attrs.Factory(lambda self: self.kind != "screenshot", takes_self=True)
    )
    """Default: every kind but ``screenshot`` (evidence, not a criterion)."""
    timeout_s: float = attrs.field(default=0.0)
    """Seconds; 0: the kind's default (``DEFAULT_TIMEOUTS``)."""

    @kind.validator
    def _kind(self, _attr: attrs.Attribute[str], value: str) -> None:
        if value not in KINDS:
            raise SettingsError(f"check {value!r}: not one of {', '.join(KINDS)}")

    def __attrs_post_init__(self) -> None:
        if self.timeout_s <= 0:
            object.__setattr__(self, "timeout_s", DEFAULT_TIMEOUTS[self.kind])
        if self.kind == "tcp":
            if not self.argument.isdigit() or not 0 < int(self.argument) < 65536:
                raise SettingsError(f"check tcp:{self.argument}: expected tcp:PORT (1-65535)")
        elif self.kind == "guest-command":
            if not self.argument.strip():
                raise SettingsError("check guest-command: expected guest-command:PROGRAM [ARGS]")
        elif self.argument:
            raise SettingsError(f"check {self.kind} takes no argument (got {self.argument!r})")

    @property
    def name(self) -> str:
        """As written on the command line."""
        return f"{self.kind}:{self.argument}" if self.argument else self.kind

    @property
    def program(self) -> tuple[str, str]:
        """A guest command's program and its arguments."""
        program, _, arguments = self.argument.strip().partition(" ")
        return program, arguments.strip()


def parse_check(text: str, *, timeout_s: float = 0.0) -> Check:
    """``KIND[:ARGUMENT]``, with a ``?`` suffix on the kind for an optional check
    (``screenshot?``). Screenshots are optional by default: evidence, not a criterion.

    :raises SettingsError: an unknown kind or a malformed argument.
    """
    kind, _, argument = text.strip().partition(":")
    optional = kind.endswith("?")
    kind = kind.removesuffix("?")
    required = not optional and kind != "screenshot"
    return Check(kind, argument.strip(), required=required, timeout_s=timeout_s)


def default_checks(*, network: bool) -> tuple[Check, ...]:
    """The checks run when none are named: partitions and heartbeat, the IP address when the
    VM is connected to a network, and a screenshot where offered."""
    checks = [Check("partitions"), Check("heartbeat")]
    if network:
        checks.append(Check("ip"))
    checks.append(Check("screenshot"))
    return tuple(checks)


def in_run_order(checks: Sequence[Check]) -> list[Check]:
    """The checks sorted as they run (by kind, stable)."""
    return sorted(checks, key=lambda c: KINDS.index(c.kind))


@attrs.frozen
class CheckResult:
    """What a check found: its outcome, when it started (UTC, ISO 8601), how long it took,
    and a detail for a person (and ``artifact``, a file of the report, e.g. the screenshot)."""

    name: str
    required: bool
    outcome: Outcome
    started: str
    duration_s: float
    detail: str = ""
    artifact: str = ""

    @property
    def ok(self) -> bool:
        """Passed, or not required."""
        return self.outcome is Outcome.PASSED or not self.required

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["outcome"] = self.outcome.value
        return data
