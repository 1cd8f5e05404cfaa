"""Resume after a restart, the I/O half: ask vSphere what the journal cannot know, then
re-establish what a continuing job holds and adopt the undo of every effect still in place.

``resume.plan_resume`` decides (pure); this module asks and acts around that decision. The
inventory is ``Backends.inventory``: without one, the journal is taken as the truth. The undos
themselves come from the effects table (``effects.py``), so a resumed job holds the same
compensations, in the same order, as the job that made the effects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs

from liverecovery.backends import RestorePoint, VmRef, VSphereInventory
from liverecovery.errors import VSphereError
from liverecovery.job.effects import UndoTarget, effect
from liverecovery.job.journal import JournalContents
from liverecovery.job.resume import ResumePlan, plan_resume
from liverecovery.job.sharing import datastore_name_for
from liverecovery.job.states import State
from liverecovery.spec import RecoverySpec

__all__ = ["Resuming", "Survey", "reestablish", "survey"]

Facts = Mapping[str, Mapping[str, Any]]

_GONE_FAULTS = frozenset({"ManagedObjectNotFound", "NotFound"})
"""vSphere faults meaning the VM is no longer registered."""


@attrs.frozen
class Survey:
    """The journal compared with vSphere: the plan, the VM the job registered (if any) and
    whether it runs (None: vSphere could not be asked)."""

    plan: ResumePlan
    vm: VmRef | None
    vm_running: bool | None


async def survey(
    contents: JournalContents, spec: RecoverySpec, inventory: VSphereInventory | None
) -> Survey:
    """Compare the journal with what ``inventory`` reports, and plan the resume."""
    facts = plan_resume(contents, vm_running=None).effects
    found: dict[str, dict[str, Any]] = {}
    if inventory is not None:
        found = await _found_effects(contents, spec.esx_host, facts, inventory)
    vm: VmRef | None = None
    if "registered" in facts or "registered" in found:
        r = facts.get("registered") or found["registered"]
        vm = VmRef(str(r["moref"]), str(r["name"]), str(r["vmx_path"]))
    vm_running: bool | None = None
    if inventory is not None and vm is not None:
        try:
            vm_running = await inventory.power_state(vm) == "poweredOn"
        except VSphereError as exc:
            # Gone from the inventory: not running. Any other error says nothing about the
            # VM: unknown, so the journal is the truth (a running VM is never taken down on a
            # guess).
            vm_running = False if exc.fault in _GONE_FAULTS else None
        if vm_running and "powered_on" not in facts:
            found["powered_on"] = {"effect": "powered_on", "moref": vm.moref}
    plan = plan_resume(contents, vm_running=vm_running, found=found, disposable=spec.verification)
    return Survey(plan, vm, vm_running)


async def _found_effects(
    contents: JournalContents, host: str, facts: Facts, inventory: VSphereInventory
) -> dict[str, dict[str, Any]]:
    """Side effects vSphere shows that the journal lacks: the process died between the
    call and its journal record (a datastore mount or a VM registration in flight)."""
    found: dict[str, dict[str, Any]] = {}
    last = State(contents.last_state)
    if last is State.MOUNTING and "mounted" not in facts and "exported" in facts:
        datastore = datastore_name_for(host)
        if datastore in await inventory.nfs_datastores(host):
            found["mounted"] = {"effect": "mounted", "host": host, "datastore": datastore}
    intent = effect("registered").intent
    if last is State.REGISTERING and "registered" not in facts:
        record = next((r.data for r in reversed(contents.records) if r.kind == intent), None)
        if record is not None:
            vm = await inventory.find_vm(str(record["vmx_path"]))
            if vm is not None:
                found["registered"] = {
                    "effect": "registered",
                    "moref": vm.moref,
                    "name": vm.name,
                    "vmx_path": vm.vmx_path,
                }
    return found


class Resuming(UndoTarget, Protocol):
    """The job being resumed, as reconciliation sees it: what it re-establishes is set here."""

    spec: RecoverySpec
    folder: str
    point: RestorePoint | None
    export_path: str | None
    datastore: str | None
    vm: VmRef | None
    migrated: bool


Adopt = Callable[[str, Mapping[str, Any]], Awaitable[None]]
"""Hold the undo of an effect a previous process made (and journal it again)."""


async def reestablish(
    job: Resuming,
    found: Survey,
    *,
    adopt: Adopt,
    publish_again: Callable[[], Awaitable[None]],
) -> None:
    """Re-establish what a continuing job holds (the cache reservation, the export with the
    same path and handles, the datastore mount, the VM folder) and adopt, in the table's order,
    the undo of each effect still in place. A job going to roll back re-establishes nothing:
    it only adopts the undos of what is still there.

    ``publish_again`` builds and publishes the VM folder afresh, replacing a stale one.
    """
    ctx, spec, plan = job.context, job.spec, found.plan
    backends, host, inventory = ctx.backends, spec.esx_host, ctx.backends.inventory
    effects, continuing = plan.effects, plan.target is not State.ROLLING_BACK
    if "cache_reserved" in effects:
        c = effects["cache_reserved"]
        job.point = await backends.catalog.restore_point(spec.vm, c.get("point_id"))
        if continuing:
            await backends.cache.reserve(job.id, int(c.get("bytes", 0)))
        await adopt(
            "cache_reserved", {"bytes": int(c.get("bytes", 0)), "point_id": c.get("point_id")}
        )
    if "exported" in effects:
        path = str(effects["exported"]["path"])
        if continuing or path in backends.exporter.exports():
            await ctx.shares.adopt_export(host, spec.client_address, job.id, path)
            job.export_path = path
            await adopt("exported", {"host": host, "path": path})
    if "mounted" in effects and (job.export_path or not continuing):
        # Rolling back, a mount is undone even though the export died with the process.
        datastore = str(effects["mounted"]["datastore"])
        mounted = True
        if inventory is not None:
            mounted = datastore in await inventory.nfs_datastores(host)
        if continuing or mounted:
            remote = ctx.settings.nfs_address or "127.0.0.1"
            await ctx.shares.adopt_mount(host, remote, job.id, datastore, mounted)
            job.datastore = datastore
            await adopt("mounted", {"host": host, "datastore": datastore})
    if "published" in effects and job.point and job.datastore and job.export_path:
        if continuing and plan.migrated is None:
            await publish_again()
        else:
            await adopt("published", {"path": job.export_path, "folder": job.folder})
    elif job.point is not None and not ctx.settings.keep_overlay:
        # Killed while staging: a half-built overlay directory may be there.
        await ctx.builder.discard(job.staging_context(datastore_name_for(host)))
    if plan.migrated is not None:
        m = plan.migrated
        name = job.vm.name if job.vm else spec.vm
        job.vm = VmRef(str(m["moref"]), name, str(m["vmx_path"]))
        job.migrated = True
    elif job.vm is not None:
        vm = job.vm
        await adopt("registered", {"moref": vm.moref, "name": vm.name, "vmx_path": vm.vmx_path})
        if "powered_on" in effects and found.vm_running is not False:
            await adopt("powered_on", {"moref": vm.moref})
