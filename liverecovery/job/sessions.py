"""Who is using which VM's backup right now: the live browse / live recovery exclusion rule.

The seed forbids a live recovery and a live browse of the same VM at the same time; we also
refuse two live recoveries of one VM, which would register two VMs with the same identity.
"""

from __future__ import annotations

import enum

import attrs

from liverecovery.errors import ConcurrentSessionError

__all__ = ["SessionKind", "SessionRegistry"]


class SessionKind(enum.StrEnum):
    RECOVERY = "live recovery"
    BROWSE = "live browse"


@attrs.define
class SessionRegistry:
    """VM name to the sessions open on it, keyed by owner (a job id or browse id)."""

    _open: dict[str, dict[str, SessionKind]] = attrs.field(factory=dict)

    def acquire(self, vm: str, kind: SessionKind, owner: str) -> None:
        """Open a session, or refuse it.

        :raises ConcurrentSessionError: another session on ``vm`` conflicts with this one.
        """
        sessions = self._open.setdefault(vm, {})
        for other_owner, other_kind in sessions.items():
            if other_owner == owner:
                continue
            if kind is SessionKind.RECOVERY or other_kind is SessionKind.RECOVERY:
                raise ConcurrentSessionError(
                    f"cannot start a {kind} of VM {vm!r}: a {other_kind} of it is running "
                    f"({other_owner})"
                )
        sessions[owner] = kind

    def release(self, vm: str, owner: str) -> None:
        """Close a session; closing one that is not open is a no-op."""
        sessions = self._open.get(vm)
        if sessions is not None:
            sessions.pop(owner, None)
            if not sessions:
                del self._open[vm]

    def sessions(self, vm: str) -> dict[str, SessionKind]:
        """Owner to kind, for every session open on ``vm``."""
        return dict(self._open.get(vm, {}))
