"""Every error liverecovery raises, in one tree.

Split by who is at fault, as h11 does: ``PreflightError`` (the request cannot be served as asked),
``SettingsError`` (the operator's configuration), ``BackendError`` (an outside system failed),
``CatalogError`` (a backup file is malformed), ``NfsError`` (an NFS status to send a client).
Messages are short and factual and name what was wrong and where; they never contain a passkey.
"""

from __future__ import annotations

import enum

__all__ = [
    "ArchivedVmError",
    "BackendError",
    "BackendTimeoutError",
    "BackupUnavailableError",
    "CacheError",
    "CacheSpaceError",
    "CatalogError",
    "ConcurrentSessionError",
    "DatastoreSpaceError",
    "DatastoreUnavailableError",
    "FolderNotFoundError",
    "HostUnavailableError",
    "JobCancelledError",
    "JobInterruptedError",
    "JobLeftRunningError",
    "JobStateError",
    "LiveRecoveryError",
    "MultipleVmsError",
    "NetworkNotFoundError",
    "NfsClientError",
    "NfsError",
    "NfsStatus",
    "NfsVolumeLimitError",
    "NotOfferedError",
    "OverlayError",
    "PasskeyError",
    "PlanError",
    "PreflightError",
    "PrivilegeError",
    "ResourcePoolNotFoundError",
    "RollbackError",
    "SettingsError",
    "TapeBackupError",
    "TargetError",
    "VSphereError",
    "VerificationRefusedError",
    "VmNameTakenError",
    "VmNameTooLongError",
]


class LiveRecoveryError(Exception):
    """Base of every error raised by liverecovery."""


class SettingsError(LiveRecoveryError, ValueError):
    """A setting or job file is invalid; the message names the setting and the source."""


class PlanError(SettingsError):
    """A recovery plan cannot run as written: ``problems`` lists every reason at once, each
    naming the file and line (or the host and count, for the hosts' limits)."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message + "".join(f"\n  {p}" for p in problems))
        self.problems = problems


class JobStateError(LiveRecoveryError):
    """An operation was asked of a job in a state that does not allow it (local misuse)."""


class JobInterruptedError(LiveRecoveryError):
    """The process running a job stopped; on resume the job was rolled back."""


class JobLeftRunningError(JobInterruptedError):
    """The job's process stopped serving while its VM runs from the backup (``LiveRecovery``
    exited, or resuming could not re-establish it): the VM, its export and its journal are
    left in place, and ``resume`` serves it again."""


class JobCancelledError(LiveRecoveryError):
    """The job was cancelled and rolled back; raised by ``Job.wait()``."""


class RollbackError(LiveRecoveryError):
    """One or more compensation steps failed; ``errors`` holds each, in the order they happened."""

    def __init__(self, message: str, errors: tuple[BaseException, ...]) -> None:
        super().__init__(message)
        self.errors = errors


# -- preflight -----------------------------------------------------------------------------------


class PreflightError(LiveRecoveryError):
    """The recovery is refused before anything is touched."""


class TapeBackupError(PreflightError):
    """Live recovery cannot run from a backup on a tape library."""


class ArchivedVmError(PreflightError):
    """Live recovery cannot run from an archived VM."""


class MultipleVmsError(PreflightError):
    """A live recovery job recovers exactly one VM."""


class ConcurrentSessionError(PreflightError):
    """A live browse and a live recovery of the same VM cannot run at the same time.

    ``vm`` names the VM; ``holders`` describes each conflicting session found (kind, owner and,
    for another process, its pid and host).
    """

    def __init__(self, message: str, *, vm: str = "", holders: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.vm = vm
        self.holders = holders


class PasskeyError(PreflightError):
    """A restore passkey is configured and the job's passkey is missing or wrong."""


class CacheSpaceError(PreflightError):
    """The cache filesystem has less free space than the job needs."""


class TargetError(PreflightError):
    """A vSphere object the job would use is missing or unfit; ``target`` names it (``host
    'esx01'``, ``datastore 'ssd-01'``...). Raised by preflight before anything is exported."""

    def __init__(self, message: str, *, target: str = "") -> None:
        super().__init__(message)
        self.target = target


class HostUnavailableError(TargetError):
    """The ESX host is not in the inventory, not connected, or in maintenance mode."""


class DatastoreUnavailableError(TargetError):
    """A datastore the job needs is missing, not mounted on the host, inaccessible, read-only
    or in maintenance mode."""


class DatastoreSpaceError(TargetError):
    """A datastore has less free space than the recovered VM will take there."""


class FolderNotFoundError(TargetError):
    """The VM folder the spec names does not exist."""


class ResourcePoolNotFoundError(TargetError):
    """The resource pool the spec names does not exist."""


class VmNameTakenError(TargetError):
    """A VM with the name the recovered VM would be registered under already exists."""


class VmNameTooLongError(TargetError):
    """The name the recovered VM would be registered under is over vSphere's 80 characters."""


class NetworkNotFoundError(TargetError):
    """A port group the VM's NICs connect to (after the spec's network map) is not on the host."""


class PrivilegeError(TargetError):
    """The vSphere session lacks a privilege the job needs on one of its targets."""


class NfsVolumeLimitError(PreflightError):
    """The ESX host already mounts as many NFS datastores as its ``NFS.MaxVolumes`` allows."""

    def __init__(self, message: str, *, host: str = "", mounted: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.host = host
        self.mounted = mounted
        self.limit = limit


class VerificationRefusedError(PreflightError):
    """A backup verification is refused before anything is touched: a check needs what was
    not given (guest credentials, a reachable isolated network) or names nothing known."""


# -- outside systems -----------------------------------------------------------------------------


class BackendError(LiveRecoveryError):
    """An outside system (NFS exporter, vSphere, backup store, cache) failed a call.

    ``operation`` names the backend call, e.g. ``"vsphere.power_on"``.
    """

    def __init__(self, message: str, *, operation: str = "") -> None:
        super().__init__(message)
        self.operation = operation


class BackendTimeoutError(BackendError, TimeoutError):
    """A backend call did not finish within its timeout setting."""


class VSphereError(BackendError):
    """A vSphere call failed; ``fault`` keeps the vSphere fault type name (e.g. ``InvalidState``)."""

    def __init__(self, message: str, *, operation: str = "", fault: str = "") -> None:
        super().__init__(message, operation=operation)
        self.fault = fault


class NotOfferedError(BackendError):
    """The backend does not offer the capability asked for (a guest command, a screenshot)."""


class CacheError(BackendError):
    """The block cache failed (I/O error, corrupt index)."""


class OverlayError(LiveRecoveryError):
    """A write overlay's files are unusable (corrupt block map, other geometry, I/O error);
    the message names the file. Acknowledged-stable data is never silently dropped: the overlay
    refuses to open rather than guess."""


class CatalogError(LiveRecoveryError):
    """A backup file or catalog is missing or malformed; the message names the file and problem."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.problem = message


# -- NFS -----------------------------------------------------------------------------------------


class NfsStatus(enum.IntEnum):
    """nfsstat3 from RFC 1813 section 2.6."""

    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    NXIO = 6
    ACCES = 13
    EXIST = 17
    XDEV = 18
    NODEV = 19
    NOTDIR = 20
    ISDIR = 21
    INVAL = 22
    FBIG = 27
    NOSPC = 28
    ROFS = 30
    MLINK = 31
    NAMETOOLONG = 63
    NOTEMPTY = 66
    DQUOT = 69
    STALE = 70
    REMOTE = 71
    BADHANDLE = 10001
    NOT_SYNC = 10002
    BAD_COOKIE = 10003
    NOTSUPP = 10004
    TOOSMALL = 10005
    SERVERFAULT = 10006
    BADTYPE = 10007
    JUKEBOX = 10008


class NfsError(LiveRecoveryError):
    """An NFS operation failed with ``status``; a filesystem raises it, the server sends it."""

    def __init__(self, status: NfsStatus, message: str = "") -> None:
        super().__init__(
            f"NFS3ERR_{status.name}: {message}" if message else f"NFS3ERR_{status.name}"
        )
        self.status = status


class BackupUnavailableError(NfsError):
    """The store holding the backup did not answer within its retries (down, unreachable,
    overloaded): temporary, unlike a ``CatalogError``. An NFS client is told to retry later
    (NFS3ERR_JUKEBOX), so a VM running from the backup waits instead of seeing an I/O error;
    ``url`` names the object."""

    def __init__(self, message: str, *, url: str = "") -> None:
        text = f"{url}: {message}" if url else message
        super().__init__(NfsStatus.JUKEBOX, text)
        self.args = (text,)  # what a user reads: the object and the problem, no NFS status
        self.url = url
        self.problem = message


class NfsClientError(BackendError):
    """An NFS/MOUNT/PORTMAP call could not complete: connection lost, RPC rejected, bad reply."""
