"""The side effects a job leaves in the world, as one table: what undoes each, whether the undo
touches the VM, and how the journal records it.

``EFFECTS`` is data, in the order the steps make the effects (a rollback undoes them in
reverse). Both paths that hold an undo build it here, from the effect's journal record: the
forward path when a step completes (``adopted=False``) and resume when it finds the effect in
the journal of a process that died (``adopted=True``). So each undo is written once, in
``_UNDOS``. An adopted effect is undone defensively — the process that made it is gone, so
vSphere is asked first and an undo already done is not an error — while one made here is undone
outright, its failure a rollback error.

A ``vm_bound`` undo takes the VM down. It runs only in a rollback that starts before the VM runs
from the backup, or on the operator's explicit ``stop(power_off=True)`` (or when resume finds the
VM already powered off): the state table has no ``fail`` or ``cancel`` out of ``serving`` and
``migrating``. It is dropped once the storage vMotion has finished, so a migrated VM is never
powered off or unregistered.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio
import attrs

from liverecovery.backends import StagedVm, StagingContext, VmRef
from liverecovery.config import Settings
from liverecovery.errors import BackendError, BackendTimeoutError, VSphereError
from liverecovery.job.context import JobContext

__all__ = [
    "EFFECTS",
    "EFFECT_KIND",
    "UNDONE_KIND",
    "Compensation",
    "Effect",
    "UndoTarget",
    "attempt",
    "compensation",
    "effect",
    "has_undo",
]

EFFECT_KIND = "effect"
"""The journal record kind of every completed side effect (its ``effect`` field names it)."""

UNDONE_KIND = "undone"
"""The journal record kind of a compensation that succeeded (fields ``effect`` and ``name``):
the journal then no longer counts the effect as in place."""


@attrs.frozen
class Effect:
    """One row: a side effect, its undo, and its journal record."""

    name: str
    """The record's ``effect`` field."""
    undo: str
    """The compensation's name (in events, summaries and ``undone`` records)."""
    fields: tuple[str, ...]
    """The record's other fields: what the undo and resume need to know."""
    vm_bound: bool = False
    """The undo takes the VM down: never run once the VM has migrated."""
    intent: str = ""
    """A record kind journaled *before* the call (none: empty), so resume can find a call that
    completed after the crash but before its record (vSphere is asked by the intent's fields)."""
    kind: str = EFFECT_KIND
    """The journal record kind."""


EFFECTS: tuple[Effect, ...] = (
    Effect("cache_reserved", "release_cache_reservation", ("bytes", "point_id")),
    Effect("exported", "unexport", ("host", "path")),
    Effect("mounted", "unmount", ("host", "datastore")),
    Effect("published", "unpublish", ("path", "folder")),
    Effect(
        "registered",
        "unregister",
        ("moref", "name", "vmx_path"),
        vm_bound=True,
        intent="registering",
    ),
    Effect("powered_on", "power_off", ("moref",), vm_bound=True),
)

_BY_NAME: dict[str, Effect] = {e.name: e for e in EFFECTS}


def effect(name: str) -> Effect:
    """The row of effect ``name``.

    :raises KeyError: no such effect.
    """
    return _BY_NAME[name]


class UndoTarget(Protocol):
    """What an undo reads from its job when it runs (the VM reference may have changed since
    the effect was made)."""

    @property
    def id(self) -> str: ...

    @property
    def context(self) -> JobContext: ...

    @property
    def vm(self) -> VmRef | None: ...

    @property
    def staged(self) -> StagedVm | None: ...

    @property
    def keep_overlay(self) -> bool:
        """Keep the VM's write overlay when its folder is unpublished (``keep_overlay``, or the
        VM's writes may still be wanted)."""
        ...

    def staging_context(self, datastore: str | None = None) -> StagingContext: ...


@attrs.frozen
class Compensation:
    """An undo ready to run: the effect it undoes, bound to its job and journal record."""

    effect: str
    name: str
    vm_bound: bool
    adopted: bool
    undo: Callable[[], Awaitable[None]] = attrs.field(eq=False, repr=False)


def compensation(
    name: str, data: Mapping[str, Any], job: UndoTarget, *, adopted: bool
) -> Compensation:
    """The compensation for effect ``name`` with record fields ``data``.

    :raises KeyError: no such effect.
    :raises ValueError: ``data`` does not have exactly the effect's fields.
    """
    row = _BY_NAME[name]
    if set(data) != set(row.fields):
        raise ValueError(f"effect {name!r} records {row.fields}, not {tuple(data)}")
    undo = functools.partial(_UNDOS[row.undo], job, dict(data), adopted)
    return Compensation(row.name, row.undo, row.vm_bound, adopted, undo)


async def attempt(comp: Compensation, settings: Settings) -> BaseException | None:
    """Run ``comp`` until it succeeds, at most ``compensation_attempts`` times, each attempt
    bounded by ``timeouts.compensation``; the last error, or None."""
    error: BaseException | None = None
    for i in range(settings.compensation_attempts):
        if i:
            await anyio.sleep(settings.compensation_retry_delay_s * i)
        with anyio.move_on_after(settings.timeouts.compensation) as deadline:
            try:
                await comp.undo()
                error = None
            except Exception as exc:
                error = exc
        if deadline.cancelled_caught:
            error = BackendTimeoutError(
                f"{comp.name} did not finish within timeouts.compensation = "
                f"{settings.timeouts.compensation:g} s",
                operation=comp.name,
            )
        if error is None:
            break
    return error


def has_undo(row: Effect) -> bool:
    """Whether the row's undo is implemented."""
    return row.undo in _UNDOS


# -- the undos, one each ------------------------------------------------------------------------

_Undo = Callable[[UndoTarget, Mapping[str, Any], bool], Awaitable[None]]


async def _release_cache_reservation(
    job: UndoTarget, _data: Mapping[str, Any], _adopted: bool
) -> None:
    await job.context.backends.cache.release(job.id)


async def _unexport(job: UndoTarget, data: Mapping[str, Any], _adopted: bool) -> None:
    await job.context.shares.release_export(str(data["host"]), job.id)


async def _unmount(job: UndoTarget, data: Mapping[str, Any], _adopted: bool) -> None:
    await job.context.shares.release_mount(str(data["host"]), job.id)


async def _unpublish(job: UndoTarget, data: Mapping[str, Any], adopted: bool) -> None:
    """Unpublish the VM folder, close what serves it, remove the overlay directory. Adopted:
    the export may have died with the process, and nothing here serves the folder."""
    ctx = job.context
    path, folder = str(data["path"]), str(data["folder"])
    staging = job.staging_context()
    if adopted:
        with contextlib.suppress(BackendError):
            await ctx.backends.exporter.unpublish(path, folder)
    else:
        assert job.staged is not None
        await ctx.backends.exporter.unpublish(path, folder)
        await job.staged.filesystem.aclose()
    if not job.keep_overlay:
        await ctx.builder.discard(staging)


async def _power_state(job: UndoTarget) -> str | None:
    """What vSphere says of the VM's power: ``unknown`` without an inventory, None when the VM
    is not registered (or vSphere cannot say)."""
    inventory = job.context.backends.inventory
    if inventory is None or job.vm is None:
        return "unknown"
    try:
        return await inventory.power_state(job.vm)
    except VSphereError:
        return None


async def _unregister(job: UndoTarget, _data: Mapping[str, Any], adopted: bool) -> None:
    vsphere = job.context.backends.vsphere
    if not adopted:
        assert job.vm is not None
        await vsphere.unregister_vm(job.vm)
        return
    now = await _power_state(job)
    if job.vm is not None and now is not None:
        if now == "poweredOn":
            # A power-on that was in flight at the crash finished after it.
            await vsphere.power_off(job.vm)
        await vsphere.unregister_vm(job.vm)


async def _power_off(job: UndoTarget, _data: Mapping[str, Any], adopted: bool) -> None:
    vsphere = job.context.backends.vsphere
    if not adopted:
        assert job.vm is not None
        await vsphere.power_off(job.vm)
    elif job.vm is not None and await _power_state(job) in ("poweredOn", "unknown"):
        await vsphere.power_off(job.vm)


_UNDOS: dict[str, _Undo] = {
    "release_cache_reservation": _release_cache_reservation,
    "unexport": _unexport,
    "unmount": _unmount,
    "unpublish": _unpublish,
    "unregister": _unregister,
    "power_off": _power_off,
}
