"""The simulated host's guest, asked across the remote host's socket, answers as in-process."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from liverecovery.backends import GuestCredentials, GuestInfo, VmRef
from liverecovery.errors import BackendError
from liverecovery.sim.esx_host import SimulatedEsxHost, SimulatedVm
from liverecovery.sim.remote import RemoteSimulatedHost, SimulatedHostServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def test_guest_operations_cross_the_socket(tmp_path: Path) -> None:
    ref = VmRef("vm-1", "web01-verify-x", "[ds] f/web01.vmx")
    async with (
        SimulatedEsxHost(tmp_path / "esx") as esx,
        anyio.create_task_group() as tg,
    ):
        esx.vms[ref.moref] = SimulatedVm(ref, "ds", "f", "web01.vmx", {}, [])
        await tg.start(SimulatedHostServer(esx, tmp_path / "esx.sock").serve)
        remote = RemoteSimulatedHost(tmp_path / "esx.sock", call_timeout=20)
        creds = GuestCredentials("root", "pw")
        assert await remote.guest_info(ref) == GuestInfo()  # powered off: no Tools
        assert await remote.screenshot(ref) is None
        esx.vms[ref.moref].booted_at = time.monotonic()
        esx.guest.commands["/bin/check"] = 3
        assert await remote.guest_info(ref) == await esx.guest_info(ref)
        assert (await remote.guest_info(ref)).heartbeat == "green"
        assert await remote.run_in_guest(ref, creds, "/bin/check", "-v", 5) == 3
        shot = await remote.screenshot(ref)
        assert shot is not None and shot.startswith(b"\x89PNG")
        esx.guest.password = "other"
        with pytest.raises(BackendError, match="refused user 'root'"):
            await remote.run_in_guest(ref, creds, "/bin/check", "", 5)
        tg.cancel_scope.cancel()
