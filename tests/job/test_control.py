"""``liverecovery jobs`` / ``cancel`` reach a running process through its control socket."""

from __future__ import annotations

import stat
from pathlib import Path

import anyio
import pytest

from liverecovery import BackendError, LiveRecovery, State, StateChanged
from liverecovery.job.migration import ManualMigration
from liverecovery.recovery.control import ControlServer, request, socket_path

from .helpers import World, fast_settings, spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def test_list_and_cancel_jobs_over_the_socket(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01")
    path = socket_path(tmp_path)
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        async for event in job.events():
            if isinstance(event, StateChanged) and event.state is State.SERVING:
                break
        async with anyio.create_task_group() as tg:
            await tg.start(ControlServer(lr, path).serve)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            with anyio.fail_after(10):
                listed = await request(path, {"op": "jobs"})
                assert listed == {"jobs": [{"job_id": job.id, "vm": "web01", "state": "serving"}]}
                assert "no job" in (await request(path, {"op": "cancel", "job": "nope"}))["error"]
                assert "unknown op" in (await request(path, {"op": "reboot"}))["error"]
                # The VM runs from the backup: a cancel is refused (issue 2/8), an explicit
                # stop with power-off is the way.
                refused = await request(path, {"op": "cancel", "job": job.id})
                assert "running from the backup" in refused["error"]
                reply = await request(path, {"op": "stop", "job": job.id, "power_off": True})
            assert reply == {"job_id": job.id, "state": "cancelled"}
            tg.cancel_scope.cancel()
    assert not path.exists() and world.clean()


async def test_no_process_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no liverecovery process answers"):
        await request(socket_path(tmp_path), {"op": "jobs"})


async def test_cli_verbs_status_stop_and_migrate_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liverecovery.cli import build_parser
    from liverecovery.errors import JobStateError

    world = World()
    world.catalog.add_vm("web01")
    path = socket_path(tmp_path)

    async def cli(*argv: str) -> str:
        args = build_parser().parse_args([*argv, "--job-results-dir", str(tmp_path)])
        with anyio.fail_after(10):
            assert await args.handler(args) == 0
        return capsys.readouterr().out

    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        async for event in job.events():
            if isinstance(event, StateChanged) and event.state is State.SERVING:
                break
        async with anyio.create_task_group() as tg:
            await tg.start(ControlServer(lr, path).serve)
            out = await cli("status", job.id)
            assert job.id in out and "serving" in out and "running from the backup" in out
            with pytest.raises(JobStateError, match="--power-off"):
                await cli("stop", job.id)
            assert job.state is State.SERVING
            await cli("migrate-now", job.id)
            with anyio.fail_after(10):
                summary = await job.wait()
            assert summary.state is State.COMPLETED
            with pytest.raises(JobStateError, match="nothing to stop"):
                await cli("stop", job.id, "--power-off")
            tg.cancel_scope.cancel()
    assert world.clean()
