"""One VM's backup verification, driven through a ``RecoveryJob``.

The restore point is powered on from the backup as a disposable, isolated copy
(``RecoverySpec.verification``): registered as ``<vm>-verify-<job id>`` (within vSphere's
80-character limit: ``verify.names``) with a new BIOS UUID
and no ``vc.uuid``, its NICs disconnected or moved to the isolated port group, its writes in
the job's overlay, never migrated. The guest-free checks read the backup first; the guest
checks run once the VM is powered on; then, whatever happened (pass, fail, a check's timeout,
a cancel, an error), the job is stopped with ``power_off=True`` and undoes everything:
power off, unregister, unpublish (overlay discarded), unmount, unexport. The report is written
last, into the job results folder.

``verify_vm`` takes the function that starts a job, so a plan can call it for each of its VMs.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import attrs

from liverecovery.backends import (
    Backends,
    GuestCredentials,
    GuestOperations,
    RestorePoint,
    VmRef,
)
from liverecovery.config import Settings
from liverecovery.datastore.vmx_rewrite import nic_networks
from liverecovery.errors import (
    JobStateError,
    LiveRecoveryError,
    NotOfferedError,
    PreflightError,
    VerificationRefusedError,
)
from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.io.threads import run_sync
from liverecovery.job.events import StateChanged
from liverecovery.job.job import RecoveryJob
from liverecovery.job.states import State
from liverecovery.spec import RecoverySpec
from liverecovery.verify.checks import (
    GUEST_KINDS,
    Check,
    CheckResult,
    Outcome,
    default_checks,
    in_run_order,
)
from liverecovery.verify.disks import inspect_disk, layout_problems
from liverecovery.verify.names import verification_name
from liverecovery.verify.report import VerificationReport

__all__ = ["SCREENSHOT", "VerifyOptions", "refusals", "verification_name", "verify_vm"]

SCREENSHOT = "screenshot.png"

StartJob = Callable[[RecoverySpec], Awaitable[RecoveryJob]]


@attrs.frozen
class VerifyOptions:
    """How a verification isolates the VM and what its checks may use.

    ``isolated_network``: the port group every NIC is moved to (None: NICs start
    disconnected). ``network_reachable``: this machine can reach that network (``tcp`` checks
    need it). ``credentials``: the guest account for ``guest-command`` (from environment
    variables, never flags). ``report_dir``: where the report goes (default:
    ``<job_results_dir>/verify/<job id>``). ``poll_s``: how often the guest is asked.
    """

    isolated_network: str | None = None
    network_reachable: bool = False
    credentials: GuestCredentials | None = None
    report_dir: Path | None = None
    poll_s: float = 2.0


def refusals(checks: Sequence[Check], options: VerifyOptions, *, guest: bool = True) -> list[str]:
    """Why the checks cannot run as asked (empty: they can); pure. ``guest``: the vSphere
    client offers guest information (``GuestOperations``)."""
    found = []
    kinds = {c.kind for c in checks}
    if kinds & GUEST_KINDS and not guest:
        found.append(
            f"checks {', '.join(sorted(kinds & GUEST_KINDS))} need guest information, which "
            "the vSphere client does not offer (GuestOperations)"
        )
    if "guest-command" in kinds and options.credentials is None:
        found.append(
            "guest-command checks need guest credentials: set the environment variables named "
            "by --guest-user-env and --guest-password-env (GuestCredentials in the API)"
        )
    if "tcp" in kinds and not (options.isolated_network and options.network_reachable):
        found.append(
            "tcp checks need the VM on an isolated network this machine can reach: give "
            "--isolated-network PORTGROUP and --network-reachable"
        )
    if "ip" in kinds and not options.isolated_network:
        found.append(
            "the ip check needs a connected NIC: give --isolated-network PORTGROUP (without it "
            "the NICs start disconnected)"
        )
    names = [c.name for c in checks]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        found.append(f"checks named twice: {', '.join(dupes)}")
    return found


def _why(exc: OSError) -> str:
    """The reason a connection failed (anyio wraps each attempt's error in a group)."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    error = cause if isinstance(cause, OSError) else exc
    return os.strerror(error.errno) if error.errno else str(error)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@attrs.define
class _Run:
    """The state of one verification while it runs."""

    backends: Backends
    options: VerifyOptions
    report_dir: Path
    results: list[CheckResult] = attrs.field(factory=list)
    powered_on_at: float | None = None
    heartbeat_at: float | None = None
    ip: str | None = None
    last_guest: str = ""
    """What the guest last reported, for a timed-out check's detail."""

    async def timed(
        self, check: Check, body: Callable[[], Awaitable[tuple[Outcome, str, str]]]
    ) -> None:
        """Run ``body`` within the check's timeout and record its result."""
        started, t0 = _now(), time.monotonic()
        outcome, detail, artifact = Outcome.TIMED_OUT, "", ""
        with anyio.move_on_after(check.timeout_s):
            try:
                outcome, detail, artifact = await body()
            except NotOfferedError as exc:
                outcome, detail = Outcome.SKIPPED, f"not offered: {exc}"
            except (LiveRecoveryError, OSError) as exc:
                outcome, detail = Outcome.FAILED, str(exc)
        if outcome is Outcome.TIMED_OUT and not detail:
            detail = f"no answer within {check.timeout_s:g} s"
            if self.last_guest:
                detail += f" (last: {self.last_guest})"
        self.results.append(
            CheckResult(
                check.name,
                check.required,
                outcome,
                started,
                round(time.monotonic() - t0, 3),
                detail,
                artifact,
            )
        )

    def skip(self, check: Check, why: str) -> None:
        outcome = Outcome.FAILED if check.required else Outcome.SKIPPED
        self.results.append(CheckResult(check.name, check.required, outcome, _now(), 0.0, why))


async def verify_vm(
    start: StartJob,
    backends: Backends,
    settings: Settings,
    spec: RecoverySpec,
    checks: Sequence[Check] = (),
    options: VerifyOptions | None = None,
    *,
    on_powered_on: Callable[[], None] | None = None,
    hold: Callable[[bool], Awaitable[None]] | None = None,
    on_report: Callable[[VerificationReport], None] | None = None,
) -> VerificationReport:
    """Verify one VM's restore point; returns the report (also written to its folder).

    For a plan's boot groups: ``on_powered_on`` is called once the copy runs from the backup;
    ``hold`` is awaited once its checks ended (with whether they passed so far), before the
    copy is undone, so later groups boot while it still runs; ``on_report`` receives the report
    even when the verification is cancelled (which re-raises the cancellation).

    :raises VerificationRefusedError: the checks cannot run as asked, or the VM's name leaves
        no room for the copy's within vSphere's limit (before anything).
    :raises PreflightError: the job's preflight refused (the isolated network does not exist,
        a VM is registered under the verification name...): nothing was touched.
    """
    options = options or VerifyOptions()
    checks = in_run_order(checks or default_checks(network=options.isolated_network is not None))
    guest = isinstance(backends.vsphere, GuestOperations)
    if problems := refusals(checks, options, guest=guest):
        raise VerificationRefusedError("verification refused: " + "; ".join(problems))
    job_id = spec.job_id or uuid.uuid4().hex[:12]
    copy_name = verification_name(spec.vm, job_id)  # refused here when it cannot fit
    catalog = backends.catalog
    point = await catalog.restore_point(spec.vm, spec.point_id)
    networks = nic_networks(await catalog.read_file(point, point.vmx_name))
    if options.isolated_network:
        network_map = {name: options.isolated_network for name in networks.values()}
        isolation = f"NICs on isolated port group {options.isolated_network!r}"
    else:
        network_map = {}
        isolation = "NICs disconnected"
    vspec = attrs.evolve(
        spec,
        job_id=job_id,
        point_id=point.point_id,
        name_suffix=copy_name[len(spec.vm) :],
        new_bios_uuid=True,
        disconnect_nics=options.isolated_network is None,
        network_map=network_map,
        verification=True,
    )
    report_dir = options.report_dir or Path(settings.job_results_dir) / "verify" / job_id
    run = _Run(backends, options, report_dir)
    started, t0 = _now(), time.monotonic()
    error, cancelled = "", False
    cleanup_errors: tuple[str, ...] = ()
    job: RecoveryJob | None = None
    try:
        for check in checks:
            if check.kind == "partitions":
                await run.timed(check, lambda: _check_partitions(backends, point))
        job = await start(vspec)
        vm = await _wait_running(job, run)
        if vm is None:
            failure = job.errors[0] if job.errors else None
            if isinstance(failure, PreflightError) and State.POWERING_ON not in job.states_visited:
                raise failure
            error = f"the restore point did not power on: {failure or job.state.value}"
        elif on_powered_on is not None:
            on_powered_on()
        for check in checks:
            if check.kind == "partitions":
                continue
            if vm is None:
                run.skip(check, error)
                continue
            await _guest_check(run, check, vm)
        if hold is not None:
            await hold(not error and all(r.ok for r in run.results))
    except anyio.get_cancelled_exc_class():
        cancelled = True
        raise
    except Exception as exc:
        # Refused in preflight, or an error no check expected: the report says so, not "passed".
        error = error or f"the verification stopped: {type(exc).__name__}: {exc}"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            if job is not None:
                cleanup_errors = await _dispose(job)
            if job is not None or not cancelled:
                report = VerificationReport(
                    job_id=job_id,
                    vm=spec.vm,
                    verification_vm=vspec.vm_name,
                    point_id=point.point_id,
                    point_created=point.created.isoformat() if point.created else "",
                    esx_host=spec.esx_host,
                    isolation=isolation,
                    started=started,
                    finished=_now(),
                    duration_s=round(time.monotonic() - t0, 3),
                    checks=tuple(run.results),
                    time_to_heartbeat_s=(
                        round(run.heartbeat_at - run.powered_on_at, 3)
                        if run.heartbeat_at is not None and run.powered_on_at is not None
                        else None
                    ),
                    cancelled=cancelled,
                    error=error,
                    cleanup_errors=cleanup_errors,
                    report_dir=report_dir,
                )
                with contextlib.suppress(OSError):
                    await report.write(report_dir)
                if on_report is not None:
                    on_report(report)
    return report


async def _wait_running(job: RecoveryJob, run: _Run) -> VmRef | None:
    """Follow the job until its VM runs from the backup (its VM) or the job ends (None)."""
    async for event in job.events():
        if isinstance(event, StateChanged):
            if event.state is State.POWERING_ON:
                run.powered_on_at = time.monotonic()
            elif event.state is State.SERVING:
                return job.vm
    return None


async def _dispose(job: RecoveryJob) -> tuple[str, ...]:
    """Power the verification's copy off and undo everything; the errors (empty: clean)."""
    if not job.done:
        try:
            state = await job.stop(power_off=True)
        except JobStateError:
            state = await job.cancel()
        if state is State.SERVING:
            return (
                f"the verification VM could not be powered off ({job.last_warning}); it still "
                f"runs: 'liverecovery stop {job.id} --power-off'",
            )
    # A job stopped while serving has only undo errors; one that failed before it ran has
    # the error that failed it first (reported as the boot failure), then undo errors.
    undo_errors = job.errors if State.SERVING in job.states_visited else job.errors[1:]
    return tuple(str(e) for e in undo_errors)


async def _check_partitions(backends: Backends, point: RestorePoint) -> tuple[Outcome, str, str]:
    lines, bad = [], []
    for disk in point.disks:
        reader = await backends.catalog.open_disk(point, disk)
        try:
            layout = await inspect_disk(reader.read, reader.size)
        finally:
            await reader.aclose()
        problems = layout_problems(layout)
        if layout.scheme == "none":
            found = f"{layout.whole_disk_filesystem} on the whole disk"
        else:
            found = f"{layout.scheme.upper()}: " + ", ".join(
                f"{f.partition.number}={f.filesystem or '?'}" for f in layout.partitions
            )
        if problems:
            bad.append(f"{disk.key} ({disk.file_name}): " + "; ".join(problems))
        lines.append(f"{disk.key} {found}")
    if bad:
        return Outcome.FAILED, "; ".join(bad), ""
    return Outcome.PASSED, "; ".join(lines), ""


async def _guest_check(run: _Run, check: Check, vm: VmRef) -> None:
    vsphere = run.backends.vsphere
    assert isinstance(vsphere, GuestOperations)
    poll = run.options.poll_s

    async def heartbeat() -> tuple[Outcome, str, str]:
        while True:
            info = await vsphere.guest_info(vm)
            run.last_guest = f"tools running: {info.tools_running}, heartbeat {info.heartbeat}"
            if info.heartbeat == "green":
                run.heartbeat_at = time.monotonic()
                since = run.heartbeat_at - (run.powered_on_at or run.heartbeat_at)
                return (
                    Outcome.PASSED,
                    f"VMware Tools heartbeat green {since:.1f} s after power-on",
                    "",
                )
            await anyio.sleep(poll)

    async def ip() -> tuple[Outcome, str, str]:
        while True:
            info = await vsphere.guest_info(vm)
            run.last_guest = f"IP address: {info.ip_address or 'none'}"
            if info.ip_address:
                run.ip = info.ip_address
                return Outcome.PASSED, f"guest IP address {info.ip_address}", ""
            await anyio.sleep(poll)

    async def tcp() -> tuple[Outcome, str, str]:
        if run.ip is None:
            info = await vsphere.guest_info(vm)
            run.ip = info.ip_address
        if run.ip is None:
            return Outcome.FAILED, "the guest reports no IP address to connect to", ""
        port = int(check.argument)
        while True:
            try:
                stream = await anyio.connect_tcp(run.ip, port)
            except OSError as exc:
                run.last_guest = f"connect to {run.ip}:{port}: {_why(exc)}"
                await anyio.sleep(poll)
                continue
            await stream.aclose()
            return Outcome.PASSED, f"{run.ip}:{port} accepted a TCP connection", ""

    async def command() -> tuple[Outcome, str, str]:
        assert run.options.credentials is not None
        program, arguments = check.program
        code = await vsphere.run_in_guest(
            vm, run.options.credentials, program, arguments, check.timeout_s
        )
        outcome = Outcome.PASSED if code == 0 else Outcome.FAILED
        return outcome, f"{check.argument} exited {code}", ""

    async def screenshot() -> tuple[Outcome, str, str]:
        data = await vsphere.screenshot(vm)
        if data is None:
            return Outcome.SKIPPED, "the vSphere client offers no console screenshot", ""
        await run_sync(make_private_dirs, run.report_dir)
        await anyio.Path(run.report_dir / SCREENSHOT).write_bytes(data)
        return Outcome.PASSED, f"console screenshot, {len(data)} bytes", SCREENSHOT

    bodies = {
        "heartbeat": heartbeat,
        "ip": ip,
        "tcp": tcp,
        "guest-command": command,
        "screenshot": screenshot,
    }
    run.last_guest = ""
    await run.timed(check, bodies[check.kind])
