"""The preflight rules: refuse what live recovery does not support, before touching anything.

Each rule raises its own ``PreflightError`` subclass with a message that names the reason and
the numbers. The checks that need no I/O run first.
"""

from __future__ import annotations

import math

from liverecovery.backends import BlockCache, MediaKind, RestorePoint
from liverecovery.config import GiB, Settings
from liverecovery.errors import (
    ArchivedVmError,
    CacheSpaceError,
    MultipleVmsError,
    PasskeyError,
    TapeBackupError,
)
from liverecovery.spec import RecoverySpec

__all__ = [
    "check_cache_space",
    "check_media",
    "check_passkey",
    "check_single_vm",
    "format_bytes",
    "required_cache_bytes",
]


def format_bytes(n: int) -> str:
    """``n`` bytes in GiB with two decimals (the unit the thresholds are set in)."""
    return f"{n / GiB:.2f} GiB"


def check_single_vm(spec: RecoverySpec) -> None:
    """:raises MultipleVmsError: the job names more than one VM."""
    if len(spec.vms) > 1:
        raise MultipleVmsError(
            f"a live recovery job recovers one VM; this job names {len(spec.vms)}: "
            + ", ".join(spec.vms)
        )


def check_media(point: RestorePoint) -> None:
    """:raises TapeBackupError, ArchivedVmError: the restore point cannot be served live."""
    if point.media is MediaKind.TAPE:
        raise TapeBackupError(
            f"restore point {point.point_id!r} of VM {point.vm_name!r} is on a tape library; "
            "live recovery needs disk or cloud storage"
        )
    if point.archived:
        raise ArchivedVmError(
            f"VM {point.vm_name!r} (restore point {point.point_id!r}) is archived; "
            "restore it fully instead"
        )


def check_passkey(settings: Settings, point: RestorePoint, passkey: str | None) -> None:
    """:raises PasskeyError: a passkey is configured (or required) and missing or wrong.

    The message never contains the passkey.
    """
    configured = settings.restore_passkey
    if configured is None:
        if point.passkey_required:
            raise PasskeyError(
                f"restore point {point.point_id!r} of VM {point.vm_name!r} requires a restore "
                "passkey, but none is configured in the settings (restore_passkey)"
            )
        return
    if not passkey:
        raise PasskeyError("a restore passkey is configured and the job gave none")
    if not configured.matches(passkey):
        raise PasskeyError("the job's restore passkey is wrong")


def required_cache_bytes(settings: Settings, point: RestorePoint) -> int:
    """Free cache space the job needs: max(floor, fraction x the VM's total disk size)."""
    return settings.job_space_bytes(point.total_disk_bytes)


async def check_cache_space(
    settings: Settings, cache: BlockCache, point: RestorePoint, job_id: str
) -> int:
    """Check the cache has room for the job on top of its minimum free share; reserve it.

    Returns the bytes reserved. :raises CacheSpaceError: not enough free space.
    """
    need = required_cache_bytes(settings, point)
    space = await cache.space()
    keep = math.ceil(space.total_bytes * settings.cache_min_free_percent / 100)
    others = sum(v for k, v in cache.reservations().items() if k != job_id)
    available = space.free_bytes - keep - others
    if available < need:
        raise CacheSpaceError(
            f"cache at {settings.effective_cache_root} has {format_bytes(space.free_bytes)} free "
            f"of {format_bytes(space.total_bytes)}; the job needs {format_bytes(need)} "
            f"(max({format_bytes(settings.job_space_floor_bytes)}, "
            f"{settings.job_space_fraction:.0%} of the VM's {format_bytes(point.total_disk_bytes)})) "
            f"on top of {format_bytes(keep)} kept free ({settings.cache_min_free_percent:g} %) "
            f"and {format_bytes(others)} reserved by other jobs"
        )
    await cache.reserve(job_id, need)
    return need
