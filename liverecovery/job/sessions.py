"""Who is using which VM's backup right now: the live browse / live recovery exclusion rule.

The seed forbids a live recovery and a live browse of the same VM at the same time; we also
refuse two live recoveries of one VM, which would register two VMs with the same identity. Two
live browses may share a VM, and an owner asking again for what it holds changes nothing.

Within one registry the rule is kept in memory. A registry made with a lock directory
(``SessionRegistry.for_settings``: ``<job_results_dir>/sessions``) also keeps it against every
other process and registry using that directory, with OS file locks (see ``session_files``).
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from liverecovery.config import Settings
from liverecovery.errors import ConcurrentSessionError
from liverecovery.job.session_files import FileSession, SessionFiles, SessionHolder, SessionKind

__all__ = ["SessionHolder", "SessionKind", "SessionRegistry", "sessions_dir"]


def sessions_dir(job_results_dir: str | os.PathLike[str]) -> Path:
    """Where the session locks of one job results folder live."""
    return Path(job_results_dir) / "sessions"


@attrs.define
class SessionRegistry:
    """VM name to the sessions open on it, keyed by owner (a job id or browse id).

    ``lock_dir`` (optional) extends the rule to every process sharing that directory.
    """

    lock_dir: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(Path), kw_only=True
    )
    _open: dict[str, dict[str, SessionKind]] = attrs.field(factory=dict, init=False)
    _files: dict[tuple[str, str], FileSession] = attrs.field(factory=dict, init=False)

    @classmethod
    def for_settings(cls, settings: Settings) -> SessionRegistry:
        """A registry that excludes every process sharing ``settings.job_results_dir``."""
        return cls(lock_dir=sessions_dir(settings.job_results_dir))

    def acquire(self, vm: str, kind: SessionKind, owner: str) -> None:
        """Open a session, or refuse it.

        :raises ConcurrentSessionError: another session on ``vm`` conflicts with this one.
        :raises BackendError: the lock directory cannot be used.
        """
        sessions = self._open.get(vm, {})
        if sessions.get(owner) is kind:
            return
        for other_owner, other_kind in sessions.items():
            if other_owner == owner:
                continue
            if kind is SessionKind.RECOVERY or other_kind is SessionKind.RECOVERY:
                raise ConcurrentSessionError(
                    f"cannot start a {kind} of VM {vm!r}: a {other_kind} of it is running "
                    f"({other_owner})",
                    vm=vm,
                    holders=(f"{other_kind}: {other_owner}, this process",),
                )
        if self.lock_dir is not None:
            held = self._files.get((vm, owner))
            if held is None:
                self._files[(vm, owner)] = SessionFiles(self.lock_dir).open(vm, kind, owner)
            else:
                try:
                    held.convert(kind)
                finally:
                    if held.closed:
                        self._forget(vm, owner)
        self._open.setdefault(vm, {})[owner] = kind

    def release(self, vm: str, owner: str) -> None:
        """Close a session; closing one that is not open is a no-op."""
        held = self._files.pop((vm, owner), None)
        if held is not None:
            held.close()
        self._forget(vm, owner)

    def release_all(self) -> None:
        """Close every session this registry holds."""
        for vm, owner in [(vm, owner) for vm, owners in self._open.items() for owner in owners]:
            self.release(vm, owner)

    def sessions(self, vm: str) -> dict[str, SessionKind]:
        """Owner to kind, for every session this registry has open on ``vm``."""
        return dict(self._open.get(vm, {}))

    def holders(self, vm: str) -> list[SessionHolder]:
        """Every live session on ``vm`` in any process sharing the lock directory (this
        registry's included); empty without a lock directory."""
        if self.lock_dir is None:
            return []
        return SessionFiles(self.lock_dir).holders(vm)

    def live_owners(self) -> set[str]:
        """Owners of every live session in any process sharing the lock directory (this
        registry's included); empty without a lock directory."""
        if self.lock_dir is None or not self.lock_dir.is_dir():
            return set()
        return SessionFiles(self.lock_dir).live_owners()

    def _forget(self, vm: str, owner: str) -> None:
        self._files.pop((vm, owner), None)
        sessions = self._open.get(vm)
        if sessions is not None:
            sessions.pop(owner, None)
            if not sessions:
                del self._open[vm]
