"""What a recovery plan says: VMs, the boot groups they start in, and where they go.

A plan is a layer above jobs: each ``PlanVm`` becomes one ``RecoverySpec`` and so one
``RecoveryJob`` with its own journal. Values only; ``parse.py`` reads them from TOML and
``runner.py`` runs them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

import attrs

from liverecovery.spec import RecoverySpec

__all__ = [
    "BootGroup",
    "FailurePolicy",
    "GroupWait",
    "Placement",
    "Plan",
    "PlanVm",
    "plan_job_id",
]


class FailurePolicy(enum.StrEnum):
    """What a VM of the group failing before power-on does to the groups not yet started."""

    CONTINUE = "continue"
    STOP = "stop"


class GroupWait(enum.StrEnum):
    """When the groups after this one may start: once its VMs are powered on, or once their
    guests also report a heartbeat (VMware Tools)."""

    POWER_ON = "power-on"
    HEARTBEAT = "heartbeat"


class Placement(enum.StrEnum):
    """How VMs without a ``host`` are placed: ``explicit`` (every VM names its host),
    ``round-robin`` over the plan's hosts, or ``least-loaded`` by the hosts' free memory and
    CPU as vSphere reports them."""

    EXPLICIT = "explicit"
    ROUND_ROBIN = "round-robin"
    LEAST_LOADED = "least-loaded"


@attrs.frozen
class BootGroup:
    """VMs that start together, after the groups in ``after`` (default: the group before it
    in the plan; ``()``: none) are ready: powered on, heartbeating when ``wait`` asks, and
    ``delay_s`` later."""

    name: str
    after: tuple[str, ...] | None = None
    wait: GroupWait = GroupWait.POWER_ON
    delay_s: float = 0.0
    heartbeat_timeout_s: float = 600.0
    on_failure: FailurePolicy = FailurePolicy.CONTINUE
    line: int = 0


@attrs.frozen
class PlanVm:
    """One VM of the plan: what its ``RecoverySpec`` holds (plan defaults applied), its group
    and its host (None: placed by the plan's ``placement``)."""

    vm: str
    group: str
    datastore: str
    host: str | None = None
    point_id: str | None = None
    esx_address: str | None = None
    redirect_writes_to: str | None = None
    name_suffix: str = ""
    new_bios_uuid: bool = False
    disconnect_nics: bool = False
    folder: str | None = None
    resource_pool: str | None = None
    network_map: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    line: int = 0

    def spec(self, host: str, job_id: str, passkey: str | None = None) -> RecoverySpec:
        """The job's spec once the VM is placed on ``host``."""
        return RecoverySpec(
            vm=self.vm,
            esx_host=host,
            datastore=self.datastore,
            point_id=self.point_id,
            esx_address=self.esx_address,
            redirect_writes_to=self.redirect_writes_to,
            passkey=passkey,
            name_suffix=self.name_suffix,
            new_bios_uuid=self.new_bios_uuid,
            disconnect_nics=self.disconnect_nics,
            job_id=job_id,
            folder=self.folder,
            resource_pool=self.resource_pool,
            network_map=self.network_map,
        )


def _serialize(_inst: object, _field: object, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def plan_job_id(plan_name: str, vm: str) -> str:
    """The job id of ``vm`` in the plan: stable, so a resumed plan finds its jobs again."""
    raw = _UNSAFE.sub("-", f"{plan_name}.{vm}").strip("-.") or "vm"
    return raw[:64] if raw[0].isalnum() else ("p" + raw)[:64]


@attrs.frozen
class Plan:
    """A recovery plan: its VMs in boot groups, the hosts it may place them on, and how many
    jobs may be between start and power-on at once (``max_in_flight``)."""

    name: str
    groups: tuple[BootGroup, ...]
    vms: tuple[PlanVm, ...]
    hosts: tuple[str, ...] = ()
    placement: Placement = Placement.EXPLICIT
    max_in_flight: int = 8
    source: str = "plan"
    hosts_line: int = 0
    """The line of ``hosts`` in the plan file (0: unknown), for messages."""

    def group(self, name: str) -> BootGroup:
        """:raises KeyError: no such group."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def members(self, group: str) -> tuple[PlanVm, ...]:
        """The VMs of ``group``, in plan order."""
        return tuple(v for v in self.vms if v.group == group)

    def job_id(self, vm: str) -> str:
        """The job id of ``vm`` (see ``plan_job_id``)."""
        return plan_job_id(self.name, vm)

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (for its journal); ``from_json`` reads it back."""
        return attrs.asdict(self, value_serializer=_serialize)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        """:raises KeyError, TypeError, ValueError: not what ``to_json`` wrote."""
        groups = tuple(
            BootGroup(
                name=g["name"],
                after=None if g["after"] is None else tuple(g["after"]),
                wait=GroupWait(g["wait"]),
                delay_s=float(g["delay_s"]),
                heartbeat_timeout_s=float(g["heartbeat_timeout_s"]),
                on_failure=FailurePolicy(g["on_failure"]),
                line=int(g["line"]),
            )
            for g in data["groups"]
        )
        vms = tuple(PlanVm(**v) for v in data["vms"])
        return cls(
            name=data["name"],
            groups=groups,
            vms=vms,
            hosts=tuple(data["hosts"]),
            placement=Placement(data["placement"]),
            max_in_flight=int(data["max_in_flight"]),
            source=data["source"],
            hosts_line=int(data["hosts_line"]),
        )

    def predecessors(self) -> dict[str, tuple[str, ...]]:
        """Each group's predecessors: its ``after``, or else the group before it."""
        found: dict[str, tuple[str, ...]] = {}
        for i, g in enumerate(self.groups):
            if g.after is not None:
                found[g.name] = g.after
            else:
                found[g.name] = (self.groups[i - 1].name,) if i else ()
        return found
