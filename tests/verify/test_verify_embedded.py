"""Verifications on the embedded environment: our NFS server on loopback, the simulated ESX
host mounting it over TCP and booting the copy from the backup (a real VMDK read through the
directory catalog). After a pass, a failure and a cancel, nothing is left on the host, on the
NFS server, or on disk; the backup is unchanged."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from liverecovery import LiveRecovery, Settings
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.cli.verify import _bootable_sample
from liverecovery.sim.embedded import Embedded, embedded_environment
from liverecovery.testing.samples import tree_digests
from liverecovery.verify.checks import Check, Outcome
from liverecovery.verify.run import VerifyOptions

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def _left(env: Embedded, work: Path) -> dict[str, object]:
    return {
        "vms": [v.ref.name for v in env.esx.vms.values()],
        "mounts": sorted(env.esx.mounts),
        "exports": sorted(env.server.exports()),
        "job_folders": sorted(p.name for p in (work / "results" / "jobs").glob("*")),
    }


async def _verify(
    tmp_path: Path, checks: list[Check], *, never_heartbeat: bool = False, cancel: bool = False
) -> tuple[object, dict[str, object]]:
    backup = tmp_path / "backup"
    _bootable_sample("emb", 64 << 20).write(backup)
    before = tree_digests(backup)
    catalog = DirectoryCatalog(backup)
    settings = Settings(
        job_results_dir=tmp_path / "results",
        job_space_floor_bytes=0,
        cache_min_free_percent=0,
        compensation_retry_delay_s=0,
    )
    report = None
    async with embedded_environment(tmp_path, catalog, settings=settings) as env:
        env.esx.guest.heartbeat_delay_s = 0.2
        if never_heartbeat:
            env.esx.guest.never_heartbeat.add("emb-verify-e1")
        async with (
            LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
            anyio.create_task_group() as tg,
        ):

            async def cancel_once_running() -> None:
                while not any(v.powered_on for v in env.esx.vms.values()):
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

            if cancel:
                tg.start_soon(cancel_once_running)
            report = await lr.verify(
                env.spec("emb", job_id="e1"), checks, VerifyOptions(poll_s=0.05)
            )
        left = _left(env, tmp_path)
    await catalog.aclose()
    assert tree_digests(backup) == before
    return report, left


async def test_a_booting_copy_passes_on_the_simulated_host(tmp_path: Path) -> None:
    report, left = await _verify(tmp_path, [Check("partitions"), Check("heartbeat")])
    assert report is not None and report.passed, report.failures  # type: ignore[attr-defined]
    assert report.time_to_heartbeat_s >= 0.2  # type: ignore[attr-defined]
    assert not any(left.values()), left


async def test_a_copy_that_never_heartbeats_fails_and_is_undone(tmp_path: Path) -> None:
    report, left = await _verify(
        tmp_path, [Check("heartbeat", timeout_s=0.5)], never_heartbeat=True
    )
    assert report is not None
    assert report.checks[0].outcome is Outcome.TIMED_OUT  # type: ignore[attr-defined]
    assert not any(left.values()), left


async def test_a_cancelled_verification_is_undone(tmp_path: Path) -> None:
    report, left = await _verify(tmp_path, [Check("heartbeat")], never_heartbeat=True, cancel=True)
    assert report is None
    assert not any(left.values()), left
    assert (tmp_path / "results" / "verify" / "e1" / "report.json").exists()
