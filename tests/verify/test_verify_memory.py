"""A verification on in-memory backends: every outcome ends with nothing left behind."""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import anyio.abc
import pytest

from liverecovery import LiveRecovery, StateChanged, Timeouts
from liverecovery.backends import GuestCredentials
from liverecovery.errors import (
    JobInterruptedError,
    JobStateError,
    NetworkNotFoundError,
    VerificationRefusedError,
    VmNameTakenError,
)
from liverecovery.job.states import State
from liverecovery.testing.memory import MemoryDisk
from liverecovery.verify.checks import Check, Outcome, parse_check

from .helpers import BOOTABLE, DISK, World, jobs_dir_empty, options, read_report, settings, spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def _outcomes(report: object) -> dict[str, str]:
    return {c.name: c.outcome.value for c in report.checks}  # type: ignore[attr-defined]


async def test_a_booting_restore_point_passes_and_leaves_nothing() -> None:
    world, s = World(), settings()
    seen: list[str] = []

    async def watch() -> None:
        while True:
            seen.extend(v.ref.name for v in world.vsphere.vms.values() if v.powered_on)
            await anyio.sleep(0.001)

    async with LiveRecovery(s, world.backends) as lr, anyio.create_task_group() as tg:
        tg.start_soon(watch)
        report = await lr.verify(spec(job_id="j1"), options=options())
        tg.cancel_scope.cancel()
    assert report.passed, report.failures
    assert _outcomes(report) == {
        "partitions": "passed",
        "heartbeat": "passed",
        "screenshot": "passed",
    }
    assert report.time_to_heartbeat_s is not None and report.time_to_heartbeat_s >= 0
    assert set(seen) == {"web01-verify-j1"}  # only the isolated copy was ever powered on
    assert world.leftovers() == {
        "exports": {},
        "published": [],
        "mounts": {},
        "vms": [],
        "reservations": {},
    }
    assert jobs_dir_empty(s)
    data = read_report(report.report_dir)
    assert data["schema"] == 1 and data["passed"] is True
    assert data["verification_vm"] == "web01-verify-j1"
    assert data["isolation"] == "NICs disconnected"
    assert (report.report_dir / "screenshot.png").read_bytes().startswith(b"\x89PNG")
    assert "PASSED" in (report.report_dir / "report.md").read_text()


async def test_the_copy_is_isolated_in_its_vmx() -> None:
    world, s = World(), settings()
    vmx: list[bytes] = []
    original = world.exporter.publish

    async def capture(path: str, folder: str, fs: object) -> None:
        from liverecovery.datastore.memfs import MemoryFilesystem

        assert isinstance(fs, MemoryFilesystem)
        vmx.append(fs.file_bytes("web01.vmx"))
        await original(path, folder, fs)  # type: ignore[arg-type]

    world.exporter.publish = capture  # type: ignore[method-assign]
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(
            spec(), [Check("heartbeat")], options(isolated_network="isolated-test")
        )
    assert report.passed
    text = vmx[0].decode()
    assert "vc.uuid" not in text
    assert 'ethernet0.networkName = "isolated-test"' in text
    assert "web01-verify-" in text  # displayName


async def test_a_guest_that_never_heartbeats_fails_with_the_reason() -> None:
    world, s = World(), settings()
    world.vsphere.guest.never_heartbeat.add("web01-verify-j2")
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(spec(job_id="j2"), [Check("heartbeat", timeout_s=0.3)], options())
    assert not report.passed
    (result,) = report.checks
    assert result.outcome is Outcome.TIMED_OUT
    assert "0.3 s" in result.detail and "heartbeat gray" in result.detail
    assert report.time_to_heartbeat_s is None
    assert not any(world.leftovers().values()) and jobs_dir_empty(s)
    assert read_report(report.report_dir)["checks"][0]["outcome"] == "timed_out"


async def test_a_slow_guest_command_times_out_and_the_rest_still_runs() -> None:
    world, s = World(), settings()
    world.vsphere.guest.commands["/bin/check"] = 0
    world.vsphere.guest.command_delay_s = 30
    creds = GuestCredentials("root", "secret")
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(
            spec(),
            [parse_check("guest-command:/bin/check --all", timeout_s=0.2), Check("heartbeat")],
            options(credentials=creds),
        )
    assert _outcomes(report) == {
        "heartbeat": "passed",
        "guest-command:/bin/check --all": "timed_out",
    }
    assert not report.passed
    assert not any(world.leftovers().values())


async def test_a_guest_command_that_exits_nonzero_fails() -> None:
    world, s = World(), settings()
    world.vsphere.guest.commands["/bin/false"] = 1
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(
            spec(),
            [parse_check("guest-command:/bin/false")],
            options(credentials=GuestCredentials("root", "x")),
        )
    assert report.checks[0].outcome is Outcome.FAILED
    assert "exited 1" in report.checks[0].detail


async def test_a_disk_without_a_partition_table_fails_the_partitions_check() -> None:
    world, s = World(), settings()
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(spec("blank01"), [Check("partitions")], options())
    assert report.checks[0].outcome is Outcome.FAILED
    assert "no partition table" in report.checks[0].detail
    assert not any(world.leftovers().values())


async def test_cancelling_a_verification_leaves_nothing() -> None:
    world, s = World(), settings()
    world.vsphere.guest.never_heartbeat.add("web01-verify-j3")
    async with LiveRecovery(s, world.backends) as lr, anyio.create_task_group() as tg:

        async def cancel_once_running() -> None:
            while not any(v.powered_on for v in world.vsphere.vms.values()):
                await anyio.sleep(0.005)
            tg.cancel_scope.cancel()  # mid-heartbeat: the copy runs from the backup

        tg.start_soon(cancel_once_running)
        await lr.verify(spec(job_id="j3"), [Check("heartbeat")], options())
        raise AssertionError("not cancelled")
    assert tg.cancel_scope.cancelled_caught
    assert not any(world.leftovers().values())
    assert jobs_dir_empty(s)
    data = read_report(Path(s.job_results_dir) / "verify" / "j3")
    assert data["cancelled"] is True and data["passed"] is False


async def test_leaving_liverecovery_powers_a_verification_copy_off() -> None:
    """Unlike a recovered VM (left running), a verification's copy is never left behind."""
    world, s = World(), settings()
    world.vsphere.guest.never_heartbeat.add("web01-verify-j4")
    async with LiveRecovery(s, world.backends) as lr:
        job = await lr.start(spec(job_id="j4", verification=True))
        with anyio.fail_after(10):
            async for event in job.events():
                if isinstance(event, StateChanged) and event.state is State.SERVING:
                    break
        assert [v.powered_on for v in world.vsphere.vms.values()] == [True]
    assert job.done and not job.left_running
    assert job.state is State.CANCELLED
    assert not any(world.leftovers().values())


async def test_a_power_on_failure_is_reported_and_undone() -> None:
    world, s = World(), settings()
    world.faults.fail("vsphere.power_on")
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(spec(), [Check("heartbeat")], options())
    assert not report.passed
    assert "did not power on" in report.error
    assert report.checks[0].outcome is Outcome.FAILED
    assert not any(world.leftovers().values())


async def test_preflight_refuses_a_missing_isolated_network() -> None:
    world, s = World(), settings()
    async with LiveRecovery(s, world.backends) as lr:
        with pytest.raises(NetworkNotFoundError, match="no-such-pg"):
            await lr.verify(spec(), [Check("heartbeat")], options(isolated_network="no-such-pg"))
    assert not any(world.leftovers().values())


async def test_disconnected_nics_verify_on_a_host_without_the_vms_port_groups() -> None:
    world, s = World(), settings()
    world.vsphere.networks = {"Other"}  # the backup's NICs name "VM Network"
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(spec(), [Check("heartbeat")], options())
    assert report.passed, report.error
    assert not any(world.leftovers().values())


async def test_preflight_refuses_a_taken_verification_name() -> None:
    world, s = World(), settings()
    world.vsphere.datastores["esx01"]["other"] = ("h", "/p")
    await world.vsphere.register_vm("esx01", "[other] x/x.vmx", "web01-verify-j5")
    async with LiveRecovery(s, world.backends) as lr:
        with pytest.raises(VmNameTakenError, match="web01-verify-j5"):
            await lr.verify(spec(job_id="j5"), [Check("heartbeat")], options())
    assert [v.ref.name for v in world.vsphere.vms.values()] == ["web01-verify-j5"]


@pytest.mark.parametrize(
    ("checks", "opts", "match"),
    [
        (["guest-command:/bin/true"], {}, "guest credentials"),
        (["tcp:22"], {"isolated_network": "isolated-test"}, "--network-reachable"),
        (["ip"], {}, "connected NIC"),
        (["heartbeat", "heartbeat"], {}, "named twice"),
    ],
)
async def test_checks_that_cannot_run_are_refused_before_anything(
    checks: list[str], opts: dict[str, object], match: str
) -> None:
    world, s = World(), settings()
    async with LiveRecovery(s, world.backends) as lr:
        with pytest.raises(VerificationRefusedError, match=match):
            await lr.verify(spec(), [parse_check(c) for c in checks], options(**opts))
    assert "exporter.export" not in world.faults.calls
    assert not any(world.leftovers().values())


async def test_a_verification_copy_found_running_on_resume_is_powered_off_and_undone(
    tmp_path: Path,
) -> None:
    """The process died while the copy ran: resume does not serve it again (it is not
    production), it powers it off and undoes everything."""
    world, s = World(), settings(job_results_dir=tmp_path)
    async with LiveRecovery(s, world.backends) as lr:
        job = await lr.start(spec(job_id="j6", verification=True))
        with anyio.fail_after(10):
            async for event in job.events():
                if isinstance(event, StateChanged) and event.state is State.SERVING:
                    break
        # The process dies: nothing in memory is undone, the journal just stops.
        job._compensations.clear()
        journal, job._journal = job._journal, None
        assert journal is not None
        await journal.aclose()
    assert [v.powered_on for v in world.vsphere.vms.values()] == [True]
    async with LiveRecovery(s, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with anyio.fail_after(10):
            await resumed._done.wait()
    # Stopped from serving, or rolled back as interrupted when the crash came before the
    # serving state was journaled: either way powered off and undone, never served again.
    assert State.SERVING not in resumed.states_visited[1:] or resumed.state is State.CANCELLED
    assert resumed.state in (State.CANCELLED, State.FAILED)
    assert all(isinstance(e, JobInterruptedError) for e in resumed.errors)
    assert "power_off" in resumed.compensations_run
    assert not any(world.leftovers().values()), world.leftovers()
    assert jobs_dir_empty(s)


async def test_the_destination_datastore_is_not_asked_about() -> None:
    """A verification's copy is never migrated: a destination that does not exist (the CLI's
    placeholder) is not a reason to refuse it."""
    world, s = World(), settings()
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(spec(datastore="(not migrated)"), [Check("heartbeat")], options())
    assert report.passed, report.failures


async def test_a_copy_that_cannot_be_powered_off_is_reported_and_never_hangs_the_exit() -> None:
    world, s = World(), settings(compensation_attempts=2)
    world.faults.fail("vsphere.power_off", times=math.inf)
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(spec(job_id="j7"), [Check("heartbeat")], options())
    assert report.checks[0].outcome is Outcome.PASSED
    assert not report.passed
    (error,) = report.cleanup_errors
    assert "could not be powered off" in error and "liverecovery stop j7 --power-off" in error
    # Leaving LiveRecovery tried once more, then left it running (with the usual warning)
    # instead of hanging: it is still registered and powered on.
    assert [v.powered_on for v in world.vsphere.vms.values()] == [True]
    assert read_report(report.report_dir)["cleanup"]["clean"] is False


async def test_tcp_checks_connect_to_the_guest_address() -> None:
    world, s = World(), settings()
    world.vsphere.guest.ip_address = "127.0.0.1"
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    closed = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    closed_port = closed.extra(anyio.abc.SocketAttribute.local_port)
    await closed.aclose()

    async def accept(stream: anyio.abc.SocketStream) -> None:
        await stream.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, accept)
        async with LiveRecovery(s, world.backends) as lr:
            report = await lr.verify(
                spec(),
                [
                    Check("heartbeat"),
                    Check("ip"),
                    Check("tcp", str(port)),
                    Check("tcp", str(closed_port), timeout_s=0.3),
                ],
                options(isolated_network="isolated-test", network_reachable=True),
            )
        tg.cancel_scope.cancel()
    outcomes = _outcomes(report)
    assert outcomes[f"tcp:{port}"] == "passed"
    assert outcomes[f"tcp:{closed_port}"] == "timed_out"
    assert "refused" in report.checks[-1].detail.lower()
    assert not any(world.leftovers().values())


async def test_a_screenshot_not_offered_is_skipped_and_optional() -> None:
    world, s = World(), settings()
    world.vsphere.guest.screenshots = False
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(spec(), [Check("heartbeat"), parse_check("screenshot")], options())
    assert _outcomes(report)["screenshot"] == "skipped"
    assert report.passed


async def test_a_guest_that_reports_no_ip_fails_the_ip_check() -> None:
    world, s = World(), settings()
    world.vsphere.guest.no_ip.add("web01-verify-j8")
    async with LiveRecovery(s, world.backends) as lr:
        report = await lr.verify(
            spec(job_id="j8"),
            [Check("heartbeat"), Check("ip", timeout_s=0.3)],
            options(isolated_network="isolated-test"),
        )
    assert _outcomes(report) == {"heartbeat": "passed", "ip": "timed_out"}
    assert "IP address: none" in report.checks[1].detail


async def test_an_unexpected_error_is_raised_undone_and_never_reported_as_passed() -> None:
    world, s = World(), settings()
    world.faults.fail("vsphere.guest_info", RuntimeError("boom"))
    async with LiveRecovery(s, world.backends) as lr:
        with pytest.raises(RuntimeError, match="boom"):
            await lr.verify(spec(job_id="j9"), [Check("heartbeat")], options())
    assert not any(world.leftovers().values()) and jobs_dir_empty(s)
    data = read_report(Path(s.job_results_dir) / "verify" / "j9")
    assert data["passed"] is False and "RuntimeError: boom" in data["error"]


async def test_a_cancel_landing_inside_the_power_on_call_still_leaves_nothing() -> None:
    """vCenter powered the copy on but has not answered yet when the cancel comes: the call is
    allowed to finish, so the rollback knows to power it off."""
    world, s = World(), settings()
    original = world.vsphere.power_on

    async def slow_answer(vm: object) -> None:
        await original(vm)  # type: ignore[arg-type]
        await anyio.sleep(0.2)

    world.vsphere.power_on = slow_answer  # type: ignore[method-assign]
    async with LiveRecovery(s, world.backends) as lr, anyio.create_task_group() as tg:

        async def cancel_once_on() -> None:
            while not any(v.powered_on for v in world.vsphere.vms.values()):
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_once_on)
        await lr.verify(spec(), [Check("heartbeat")], options())
    assert not any(world.leftovers().values()), world.leftovers()


async def test_a_hung_power_on_is_still_bounded_by_its_step_timeout() -> None:
    world, s = World(), settings(timeouts=Timeouts(power_on=0.3))
    world.faults.hang("vsphere.power_on")
    async with LiveRecovery(s, world.backends) as lr:
        with anyio.fail_after(10):
            report = await lr.verify(spec(), [Check("heartbeat")], options())
    assert "did not finish within timeouts.power_on = 0.3 s" in report.error
    assert not any(world.leftovers().values())


async def test_operator_verbs_on_a_verification_copy() -> None:
    """A verification's copy is never migrated; a plain stop or a cancel powers it off."""
    world, s = World(), settings()
    async with LiveRecovery(s, world.backends) as lr:
        job = await lr.start(spec(verification=True))
        with anyio.fail_after(10):
            async for event in job.events():
                if isinstance(event, StateChanged) and event.state is State.SERVING:
                    break
        with pytest.raises(JobStateError, match="never migrated"):
            await job.migrate_now()
        assert await job.stop() is State.CANCELLED
        job2 = await lr.start(spec(verification=True))
        with anyio.fail_after(10):
            async for event in job2.events():
                if isinstance(event, StateChanged) and event.state is State.SERVING:
                    break
        assert await job2.cancel() is State.CANCELLED
    assert not any(world.leftovers().values())


@pytest.mark.parametrize("length", [60, 64, 65])
async def test_long_vm_names_within_vsphere_s_limit(length: int) -> None:
    """Up to 60 characters the copy is ``<vm>-verify-<12-digit id>``; up to 64 the id is
    shortened to its hash; beyond, the verification is refused before anything, naming the VM
    and the limit. The in-memory vSphere refuses names over 80, as vCenter does."""
    world, s = World(), settings()
    vm = "w" * length
    backup = world.catalog.add_vm(vm, disk_sizes=(DISK,))
    backup.disks[f"{vm}_0.vmdk"] = MemoryDisk(DISK, BOOTABLE)
    async with LiveRecovery(s, world.backends) as lr:
        if length > 64:
            with pytest.raises(VerificationRefusedError, match="80-character limit") as info:
                await lr.verify(spec(vm, job_id="0123456789ab"), options=options())
            assert repr(vm) in str(info.value)
            assert "exporter.export" not in world.faults.calls
            return
        report = await lr.verify(spec(vm, job_id="0123456789ab"), options=options())
    assert report.passed, report.failures
    assert report.verification_vm.startswith(f"{vm}-verify-")
    assert len(report.verification_vm) <= 80
    if length == 60:
        assert report.verification_vm == f"{vm}-verify-0123456789ab"
    else:
        assert report.verification_vm != f"{vm}-verify-0123456789ab"
    assert not any(world.leftovers().values())
