"""What one recovery job is asked to do."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import attrs

from liverecovery.errors import SettingsError

__all__ = ["MAX_VM_NAME", "RecoverySpec", "vsphere_name_length"]

MAX_VM_NAME = 80
"""The longest VM name vSphere accepts (escaped, see ``vsphere_name_length``)."""
_ESCAPED = {"%": "%25", "/": "%2f", "\\": "%5c"}


def vsphere_name_length(name: str) -> int:
    """How long vSphere counts a VM name: ``%``, ``/`` and ``\\`` escaped to three characters
    ("fewer if %, \\ or / are used"), then UTF-16 code units (a character outside the Basic
    Multilingual Plane counts 2): the stricter count, so a name we accept is never refused."""
    escaped = "".join(_ESCAPED.get(c, c) for c in name)
    return len(escaped.encode("utf-16-le", "surrogatepass")) // 2


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _vms(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _nonempty(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"RecoverySpec.{attr.name} must be a non-empty string")


def _network_map(value: Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError("RecoverySpec.network_map must map old port group names to new ones")
    for old, new in value.items():
        if not isinstance(old, str) or not isinstance(new, str) or not old or not new.strip():
            raise SettingsError(
                f"RecoverySpec.network_map: {old!r} -> {new!r}: both must be non-empty strings"
            )
    return dict(value)


def _optional_name(_inst: object, attr: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise SettingsError(f"RecoverySpec.{attr.name} must be a non-empty string when given")


def _job_id(_inst: object, _attr: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not _NAME.match(value):
        raise SettingsError(
            f"RecoverySpec.job_id {value!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )


@attrs.frozen
class RecoverySpec:
    """A live recovery of one VM's restore point onto one ESX host.

    ``vm`` may name several VMs only so that preflight can refuse it with a clear message (the
    seed: one VM per job). ``esx_address`` is the address the ESX host connects from (the NFS
    export's allow list); it defaults to ``esx_host``. ``redirect_writes_to`` names an alternate
    datastore for the VM's writes (snapshot deltas, swap) instead of the NFS datastore.
    ``new_bios_uuid`` gives the recovered VM a new BIOS UUID (keep it, the default, when the VM
    replaces the original); ``disconnect_nics`` powers it on with its NICs disconnected (when
    the original may still be on the network). ``folder`` and ``resource_pool`` name where the
    VM is registered (default: the host's datacenter VM folder and its root pool);
    ``network_map`` renames the port groups the .vmx names (old -> new), for a recovery site
    whose networks differ. ``verification`` makes the job a backup verification's disposable,
    isolated copy (``liverecovery.verify``): it is never migrated, its .vmx loses ``vc.uuid``,
    and it is powered off and undone when its verification ends, even when the process stops
    (it is not production: the one case where the library powers a VM off by itself).
    The passkey is never part of ``repr``.
    """

    vms: tuple[str, ...] = attrs.field(converter=_vms, alias="vm")
    esx_host: str = attrs.field(validator=_nonempty)
    datastore: str = attrs.field(validator=_nonempty)
    point_id: str | None = None
    esx_address: str | None = None
    redirect_writes_to: str | None = None
    passkey: str | None = attrs.field(default=None, repr=False)
    name_suffix: str = ""
    new_bios_uuid: bool = False
    disconnect_nics: bool = False
    job_id: str | None = attrs.field(default=None, validator=_job_id)
    folder: str | None = attrs.field(default=None, validator=_optional_name)
    resource_pool: str | None = attrs.field(default=None, validator=_optional_name)
    network_map: Mapping[str, str] = attrs.field(factory=dict, converter=_network_map, hash=False)
    verification: bool = False

    @vms.validator
    def _check_vms(self, _attr: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        if not value or any(not isinstance(v, str) or not v.strip() for v in value):
            raise SettingsError("RecoverySpec.vm must name at least one VM")

    @property
    def vm(self) -> str:
        """The VM to recover (the first, when several were given)."""
        return self.vms[0]

    @property
    def vm_name(self) -> str:
        """The name the recovered VM is registered under."""
        return self.vm + self.name_suffix

    @property
    def client_address(self) -> str:
        """The address allowed to mount the export."""
        return self.esx_address or self.esx_host
