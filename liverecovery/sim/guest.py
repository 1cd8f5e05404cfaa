"""The guest a simulated host pretends runs in each powered-on VM, as VMware Tools report it:
a heartbeat and an IP address a settable time after the boot, guest commands with known exit
codes, a console screenshot. Tests tell it to fail each of them."""

from __future__ import annotations

import time
import zlib

import attrs

from liverecovery.backends import GuestCredentials, GuestInfo
from liverecovery.errors import NotOfferedError, VSphereError

__all__ = ["GuestBehaviour", "tiny_png"]


def tiny_png(width: int = 4, height: int = 3, rgb: tuple[int, int, int] = (0, 96, 160)) -> bytes:
    """A valid PNG of one colour (the simulated console)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    raw = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@attrs.define
class GuestBehaviour:
    """How simulated guests behave; a test changes the fields (per VM name where a set)."""

    heartbeat_delay_s: float = 0.0
    """Seconds from power-on (after the boot reads) to a green heartbeat and an IP address."""
    never_heartbeat: set[str] = attrs.field(factory=set)
    """VM names whose guest never starts VMware Tools (the restore point does not boot)."""
    no_ip: set[str] = attrs.field(factory=set)
    """VM names whose guest never reports an IP address."""
    ip_address: str = "192.0.2.10"
    commands: dict[str, int] = attrs.field(factory=dict)
    """Program path to the exit code a guest command ends with (unknown programs: refused)."""
    command_delay_s: float = 0.0
    password: str | None = None
    """The guest password guest operations accept (None: any)."""
    guest_operations: bool = True
    screenshots: bool = True

    def info(self, vm_name: str, booted_at: float | None) -> GuestInfo:
        """What Tools report for ``vm_name``, booted at ``booted_at`` (monotonic; None: off)."""
        if booted_at is None or vm_name in self.never_heartbeat:
            return GuestInfo()
        if time.monotonic() - booted_at < self.heartbeat_delay_s:
            return GuestInfo()
        ip = None if vm_name in self.no_ip else self.ip_address
        return GuestInfo(tools_running=True, heartbeat="green", ip_address=ip)

    def command(
        self, vm_name: str, booted_at: float | None, credentials: GuestCredentials, program: str
    ) -> int:
        """The exit code of ``program``. :raises VSphereError: as vSphere would."""
        op = "vsphere.run_in_guest"
        if not self.guest_operations:
            raise NotOfferedError("the simulated host offers no guest operations", operation=op)
        if not self.info(vm_name, booted_at).tools_running:
            raise VSphereError(
                f"VM {vm_name}: VMware Tools are not running",
                operation=op,
                fault="GuestOperationsUnavailable",
            )
        if self.password is not None and credentials.password != self.password:
            raise VSphereError(
                f"VM {vm_name}: the guest refused user {credentials.username!r}",
                operation=op,
                fault="InvalidGuestLogin",
            )
        if program not in self.commands:
            raise VSphereError(
                f"VM {vm_name}: {program} not found in the guest",
                operation=op,
                fault="FileNotFound",
            )
        return self.commands[program]
