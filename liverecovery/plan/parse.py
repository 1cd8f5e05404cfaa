"""A plan from TOML, with every problem listed at once, each naming the file and line.

    [plan]
    name = "site-a"
    hosts = ["esx01", "esx02"]
    placement = "round-robin"        # explicit | round-robin | least-loaded
    max_in_flight = 8

    [defaults]                       # any [[vm]] key, for every VM
    datastore = "ds-fast"

    [[group]]
    name = "db"
    wait = "heartbeat"               # power-on | heartbeat
    delay_s = 30
    on_failure = "stop"              # continue | stop

    [[group]]
    name = "app"
    after = ["db"]                   # default: the group before

    [[vm]]
    name = "sql01"
    group = "db"
    host = "esx01"

``[settings]`` and ``[connection]`` tables belong to the command line and are left alone here.
``parse_plan`` is pure; what needs the backup catalog and vSphere (unknown VMs and hosts) is
``reference_problems``, also pure, given their names. A ``Plan`` built in Python skips the
parser, so ``plan_problems`` checks the same rules on the value (the runner's preflight asks
it first).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeGuard

import attrs

from liverecovery.config import toml_problem
from liverecovery.errors import PlanError, SettingsError
from liverecovery.plan.model import (
    BootGroup,
    FailurePolicy,
    GroupWait,
    Placement,
    Plan,
    PlanVm,
)

__all__ = ["group_cycle", "load_plan", "parse_plan", "plan_problems", "reference_problems"]

_PLAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
_TOP = frozenset({"plan", "defaults", "group", "vm", "settings", "connection"})
_PLAN_KEYS = frozenset({"name", "hosts", "placement", "max_in_flight"})
_GROUP_KEYS = frozenset({"name", "after", "wait", "delay_s", "heartbeat_timeout_s", "on_failure"})
_STR_KEYS = (
    "group",
    "datastore",
    "host",
    "point",
    "esx_address",
    "redirect_writes_to",
    "folder",
    "resource_pool",
)
_BOOL_KEYS = ("new_bios_uuid", "disconnect_nics")
_VM_KEYS = frozenset({"name", *_STR_KEYS, *_BOOL_KEYS, "name_suffix", "network_map"})
_DEFAULT_KEYS = _VM_KEYS - {"name"}
MAX_IN_FLIGHT = 1024

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=")


@attrs.define
class _Lines:
    """Where each table, array element and key of the file starts (1-based lines)."""

    tables: dict[str, int] = attrs.field(factory=dict)
    elements: dict[str, list[int]] = attrs.field(factory=dict)
    keys: dict[tuple[str, int], dict[str, int]] = attrs.field(factory=dict)

    @classmethod
    def scan(cls, text: str) -> _Lines:
        found = cls()
        where: tuple[str, int] = ("", 0)
        for number, line in enumerate(text.splitlines(), 1):
            header = _HEADER.match(line)
            if header:
                name = header[2].strip().strip("\"'")
                if header[1] == "[[":
                    found.elements.setdefault(name, []).append(number)
                    where = (name, len(found.elements[name]) - 1)
                else:
                    found.tables.setdefault(name, number)
                    where = (name, -1)
                continue
            key = _KEY.match(line)
            if key:
                found.keys.setdefault(where, {}).setdefault(key[1].strip('"'), number)
        return found

    def of(self, table: str, index: int = -1, key: str | None = None) -> int:
        """The line of ``key`` in the table (``index`` -1) or array element, else its header."""
        if key is not None:
            line = self.keys.get((table, index), {}).get(key)
            if line:
                return line
        if index >= 0:
            lines = self.elements.get(table, [])
            return lines[index] if index < len(lines) else 0
        return self.tables.get(table, 0)


class _Problems:
    def __init__(self, source: str, lines: _Lines) -> None:
        self.source = source
        self.lines = lines
        self.found: list[tuple[int, str]] = []

    def add(self, line: int, message: str) -> None:
        self.found.append((line, message))

    def at(self, table: str, index: int, key: str | None, message: str) -> None:
        self.add(self.lines.of(table, index, key), message)

    def formatted(self) -> tuple[str, ...]:
        ordered = sorted(self.found, key=lambda p: p[0])
        return tuple(
            f"{self.source}:{line}: {msg}" if line else f"{self.source}: {msg}"
            for line, msg in ordered
        )


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


def _number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _table_list(doc: Mapping[str, Any], key: str, out: _Problems) -> list[Mapping[str, Any]]:
    value = doc.get(key, [])
    if isinstance(value, Mapping):
        out.at(key, -1, None, f"[{key}] must be an array of tables: write [[{key}]]")
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        out.at(key, -1, None, f"{key} must be an array of tables ([[{key}]])")
        return []
    return value


def _unknown(
    table: Mapping[str, Any],
    known: Collection[str],
    where: str,
    at: tuple[str, int],
    out: _Problems,
) -> None:
    for key in table:
        if key not in known:
            out.at(
                at[0],
                at[1],
                key,
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})",
            )


def _vm_fields(
    table: Mapping[str, Any], where: str, at: tuple[str, int], out: _Problems
) -> dict[str, Any]:
    """The VM keys of ``table`` checked for type; bad ones reported and dropped."""
    fields: dict[str, Any] = {}
    for key, value in table.items():
        if key in _STR_KEYS or key == "name":
            if not _is_text(value):
                out.at(*at, key, f"{where}: {key} must be a non-empty string, got {value!r}")
                continue
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                out.at(*at, key, f"{where}: {key} must be true or false, got {value!r}")
                continue
        elif key == "name_suffix":
            if not isinstance(value, str):
                out.at(*at, key, f"{where}: name_suffix must be a string, got {value!r}")
                continue
        elif key == "network_map":
            if not isinstance(value, Mapping) or not all(
                _is_text(k) and _is_text(v) for k, v in value.items()
            ):
                out.at(
                    *at,
                    key,
                    f'{where}: network_map must be a table of port group names (old = "new")',
                )
                continue
            value = dict(value)
        else:
            continue
        fields[key] = value
    return fields


def _plan_table(doc: Mapping[str, Any], source: str, out: _Problems) -> dict[str, Any]:
    table = doc.get("plan", {})
    if not isinstance(table, Mapping):
        out.at("plan", -1, None, "[plan] must be a table")
        return {}
    _unknown(table, _PLAN_KEYS, "[plan]", ("plan", -1), out)
    found: dict[str, Any] = {"name": Path(source).stem or "plan"}
    name = table.get("name")
    if name is not None:
        if _is_text(name) and _PLAN_NAME.fullmatch(name):
            found["name"] = name
        else:
            out.at(
                "plan",
                -1,
                "name",
                f"[plan] name must be 1-40 letters, digits, '.', '_' or '-', got {name!r}",
            )
    hosts = table.get("hosts", [])
    if not isinstance(hosts, list) or not all(_is_text(h) for h in hosts):
        out.at("plan", -1, "hosts", f"[plan] hosts must be a list of ESX host names, got {hosts!r}")
        hosts = []
    else:
        seen: set[str] = set()
        for h in hosts:
            if h in seen:
                out.at("plan", -1, "hosts", f"[plan] hosts names {h!r} twice")
            seen.add(h)
    found["hosts"] = tuple(dict.fromkeys(hosts))
    placement = table.get("placement", "explicit" if not hosts else "round-robin")
    try:
        found["placement"] = Placement(placement)
    except ValueError:
        out.at(
            "plan",
            -1,
            "placement",
            f"[plan] placement must be one of "
            f"{', '.join(p.value for p in Placement)}, got {placement!r}",
        )
        found["placement"] = Placement.EXPLICIT
    in_flight = table.get("max_in_flight", 8)
    if (
        not isinstance(in_flight, int)
        or isinstance(in_flight, bool)
        or not (1 <= in_flight <= MAX_IN_FLIGHT)
    ):
        out.at(
            "plan",
            -1,
            "max_in_flight",
            f"[plan] max_in_flight must be an integer in [1, {MAX_IN_FLIGHT}], got {in_flight!r}",
        )
        in_flight = 8
    found["max_in_flight"] = in_flight
    if found["placement"] is not Placement.EXPLICIT and not found["hosts"]:
        out.at(
            "plan",
            -1,
            "placement",
            f"[plan] placement {found['placement'].value!r} needs hosts = [...] to place VMs on",
        )
    return found


def _groups(doc: Mapping[str, Any], out: _Problems) -> list[BootGroup]:
    groups: list[BootGroup] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(_table_list(doc, "group", out)):
        at = ("group", i)
        name = table.get("name")
        where = f"group {name!r}" if _is_text(name) else f"group #{i + 1}"
        _unknown(table, _GROUP_KEYS, where, at, out)
        if not _is_text(name):
            out.at(*at, "name", f"{where}: name must be a non-empty string")
            continue
        line = out.lines.of("group", i)
        if name in seen:
            out.at(*at, "name", f"group {name!r} is declared twice (first at line {seen[name]})")
            continue
        seen[name] = line
        kw: dict[str, Any] = {}
        after = table.get("after")
        if after is not None:
            if not isinstance(after, list) or not all(_is_text(a) for a in after):
                out.at(*at, "after", f"{where}: after must be a list of group names, got {after!r}")
            else:
                kw["after"] = tuple(dict.fromkeys(after))
        for key, enum_type in (("wait", GroupWait), ("on_failure", FailurePolicy)):
            if key in table:
                try:
                    kw[key] = enum_type(table[key])
                except ValueError:
                    allowed = ", ".join(m.value for m in enum_type)
                    out.at(*at, key, f"{where}: {key} must be one of {allowed}, got {table[key]!r}")
        for key, minimum in (("delay_s", 0.0), ("heartbeat_timeout_s", 1e-9)):
            if key in table:
                value = table[key]
                if not _number(value) or value < minimum:
                    want = (
                        "a number of seconds, 0 or more"
                        if minimum == 0
                        else "a positive number of seconds"
                    )
                    out.at(*at, key, f"{where}: {key} must be {want}, got {value!r}")
                else:
                    kw[key] = float(value)
        groups.append(BootGroup(name, line=line, **kw))
    return groups


def _vms(
    doc: Mapping[str, Any],
    defaults: Mapping[str, Any],
    plan: Mapping[str, Any],
    groups: list[BootGroup],
    out: _Problems,
) -> list[PlanVm]:
    names = {g.name for g in groups}
    vms: list[PlanVm] = []
    seen: dict[str, int] = {}
    tables = _table_list(doc, "vm", out)
    if not tables:
        out.add(0, "the plan lists no VM: add [[vm]] tables (name = ..., group = ...)")
    for i, table in enumerate(tables):
        at = ("vm", i)
        name = table.get("name")
        where = f"vm {name!r}" if _is_text(name) else f"vm #{i + 1}"
        _unknown(table, _VM_KEYS, where, at, out)
        fields = dict(defaults) | _vm_fields(table, where, at, out)
        line = out.lines.of("vm", i)
        if "name" not in fields:
            if "name" not in table:
                out.at(*at, None, f"{where}: name is missing (the VM's name in the backup)")
            continue
        vm = fields.pop("name")
        if vm in seen:
            out.at(*at, "name", f"vm {vm!r} is listed twice (first at line {seen[vm]})")
            continue
        seen[vm] = line
        group = fields.pop("group", None)
        if group is None:
            if len(groups) == 1:
                group = groups[0].name
            else:
                out.at(
                    *at,
                    None,
                    f"{where}: group is missing (one of "
                    f"{', '.join(sorted(names)) or 'no [[group]] yet'})",
                )
                continue
        elif group not in names:
            out.at(
                *at,
                "group",
                f"{where}: unknown group {group!r} (declared: "
                f"{', '.join(sorted(names)) or 'none'})",
            )
            continue
        if "datastore" not in fields:
            out.at(*at, None, f"{where}: datastore is missing (here or in [defaults])")
            continue
        host = fields.get("host")
        if host is None and plan.get("placement") is Placement.EXPLICIT:
            out.at(
                *at,
                None,
                f"{where}: host is missing (placement is explicit: name the host, "
                "or set [plan] hosts and placement)",
            )
            continue
        if host is not None and plan.get("hosts") and host not in plan["hosts"]:
            out.at(
                *at,
                "host",
                f"{where}: host {host!r} is not one of the plan's hosts "
                f"({', '.join(plan['hosts'])})",
            )
            continue
        fields["point_id"] = fields.pop("point", None)
        item = PlanVm(vm=vm, group=group, line=line, **fields)
        try:
            item.spec(host or "placeholder", "placeholder")
        except SettingsError as exc:
            out.at(*at, None, f"{where}: {exc}")
            continue
        vms.append(item)
    return vms


def group_cycle(predecessors: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle of groups (first name repeated at the end), or None: the order exists."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(g: str) -> list[str] | None:
        state[g] = 1
        stack.append(g)
        for p in predecessors.get(g, ()):
            if p not in predecessors:
                continue
            if state.get(p) == 1:
                return [*stack[stack.index(p) :], p]
            if p not in state and (found := visit(p)) is not None:
                return found
        stack.pop()
        state[g] = 2
        return None

    for g in predecessors:
        if g not in state and (found := visit(g)) is not None:
            return found
    return None


def parse_plan(doc: Mapping[str, Any], *, source: str = "plan", text: str = "") -> Plan:
    """The plan a parsed TOML document describes (``text``: the file, for line numbers).

    :raises PlanError: every problem found, each with its line.
    """
    out = _Problems(source, _Lines.scan(text))
    for key in doc:
        if key not in _TOP:
            out.add(
                out.lines.of(key) or out.lines.of(key, 0),
                f"unknown table or key {key!r} (known: {', '.join(sorted(_TOP))})",
            )
    plan = _plan_table(doc, source, out)
    defaults_table = doc.get("defaults", {})
    defaults: dict[str, Any] = {}
    if not isinstance(defaults_table, Mapping):
        out.at("defaults", -1, None, "[defaults] must be a table")
    else:
        _unknown(defaults_table, _DEFAULT_KEYS, "[defaults]", ("defaults", -1), out)
        defaults = _vm_fields(
            {k: v for k, v in defaults_table.items() if k != "name"},
            "[defaults]",
            ("defaults", -1),
            out,
        )
    groups = _groups(doc, out)
    if not groups and "group" not in doc:
        groups = [BootGroup("default")]
    names = {g.name for g in groups}
    for _i, g in enumerate(groups):
        for other in g.after or ():
            if other == g.name:
                out.add(g.line, f"group {g.name!r} names itself in after")
            elif other not in names:
                out.add(g.line, f"group {g.name!r}: after names unknown group {other!r}")
    preds = {
        g: tuple(p for p in ps if p in names and p != g)
        for g, ps in Plan("x", tuple(groups), ()).predecessors().items()
    }
    cycle = group_cycle(preds)
    if cycle:
        first = next(g for g in groups if g.name == cycle[0])
        out.add(
            first.line,
            "boot groups wait for each other in a cycle: "
            + " -> ".join(f"{c!r}" for c in cycle)
            + " (each waits for the next; break it "
            "in an after list)",
        )
    vms = _vms(doc, defaults, plan, groups, out)
    if out.found:
        problems = out.formatted()
        raise PlanError(f"{source}: the plan has {len(problems)} problem(s):", problems)
    return Plan(
        name=plan["name"],
        groups=tuple(groups),
        vms=tuple(vms),
        hosts=plan["hosts"],
        placement=plan["placement"],
        max_in_flight=plan["max_in_flight"],
        source=source,
        hosts_line=out.lines.of("plan", -1, "hosts"),
    )


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and check a plan file.

    :raises PlanError: (a ``SettingsError``) unreadable file, TOML syntax or every problem of
        the plan at once, each naming the file and line.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the plan: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: {toml_problem(text, str(exc))}") from None
    return parse_plan(doc, source=str(path), text=text)


def reference_problems(
    plan: Plan,
    *,
    vm_names: Collection[str] | None = None,
    host_names: Collection[str] | None = None,
) -> list[str]:
    """What the plan names that does not exist: VMs not in the backup catalog (``vm_names``),
    hosts vSphere does not know (``host_names``: the hosts found). None: not checked."""
    found: list[tuple[int, str]] = []
    if vm_names is not None:
        known = set(vm_names)
        for vm in plan.vms:
            if vm.vm not in known:
                found.append((vm.line, f"vm {vm.vm!r} is not in the backup catalog"))
    if host_names is not None:
        known_hosts = set(host_names)
        lines: dict[str, int] = {h: plan.hosts_line for h in plan.hosts}
        for vm in plan.vms:
            if vm.host is not None:
                lines.setdefault(vm.host, vm.line)
        for host in lines:
            if host not in known_hosts:
                found.append((lines.get(host, 0), f"host {host!r} is not in the vSphere inventory"))
    found = list(dict.fromkeys(found))
    found.sort(key=lambda p: p[0])
    return [f"{plan.source}:{line}: {m}" if line else f"{plan.source}: {m}" for line, m in found]


def plan_problems(plan: Plan) -> list[str]:
    """What is wrong with a ``Plan`` value, whoever built it (``parse_plan`` refuses the same
    in a file, with lines); pure. Empty: the plan's shape is sound (whether its VMs and hosts
    exist is ``reference_problems``)."""
    found: list[str] = []

    def add(line: int, message: str) -> None:
        found.append(f"{plan.source}:{line}: {message}" if line else f"{plan.source}: {message}")

    if not isinstance(plan.name, str) or not _PLAN_NAME.fullmatch(plan.name):
        add(0, f"the plan's name must be 1-40 letters, digits, '.', '_' or '-', got {plan.name!r}")
    in_flight = plan.max_in_flight
    if (
        isinstance(in_flight, bool)
        or not isinstance(in_flight, int)
        or not (1 <= in_flight <= MAX_IN_FLIGHT)
    ):
        add(0, f"max_in_flight must be an integer in [1, {MAX_IN_FLIGHT}], got {in_flight!r}")
    if len(set(plan.hosts)) != len(plan.hosts):
        twice = sorted({h for h in plan.hosts if plan.hosts.count(h) > 1})
        add(plan.hosts_line, f"hosts names {', '.join(map(repr, twice))} twice")
    names: dict[str, int] = {}
    for g in plan.groups:
        if not _is_text(g.name):
            add(g.line, f"a group's name must be a non-empty string, got {g.name!r}")
            continue
        if g.name in names:
            add(g.line, f"group {g.name!r} is declared twice")
        names.setdefault(g.name, g.line)
        if not _number(g.delay_s) or g.delay_s < 0:
            add(g.line, f"group {g.name!r}: delay_s must be 0 or more, got {g.delay_s!r}")
        if not _number(g.heartbeat_timeout_s) or g.heartbeat_timeout_s <= 0:
            add(
                g.line,
                f"group {g.name!r}: heartbeat_timeout_s must be positive, "
                f"got {g.heartbeat_timeout_s!r}",
            )
    if not plan.groups:
        add(0, "the plan has no boot group")
    for g in plan.groups:
        for other in g.after or ():
            if other == g.name:
                add(g.line, f"group {g.name!r} names itself in after")
            elif other not in names:
                add(g.line, f"group {g.name!r}: after names unknown group {other!r}")
    preds = {
        g: tuple(p for p in ps if p in names and p != g) for g, ps in plan.predecessors().items()
    }
    if cycle := group_cycle(preds):
        add(
            names.get(cycle[0], 0),
            "boot groups wait for each other in a cycle: " + " -> ".join(map(repr, cycle)),
        )
    if not plan.vms:
        add(0, "the plan lists no VM")
    seen: set[str] = set()
    for vm in plan.vms:
        where = f"vm {vm.vm!r}"
        if vm.vm in seen:
            add(vm.line, f"{where} is listed twice")
        seen.add(vm.vm)
        if vm.group not in names:
            known = ", ".join(sorted(names)) or "none"
            add(vm.line, f"{where}: unknown group {vm.group!r} (declared: {known})")
        if vm.host is None and not plan.hosts:
            add(vm.line, f"{where}: no host, and the plan has no hosts to place it on")
        elif vm.host is None and plan.placement is Placement.EXPLICIT:
            add(
                vm.line,
                f"{where}: no host, and placement is explicit: name its host, or choose "
                "round-robin or least-loaded placement",
            )
        elif vm.host is not None and plan.hosts and vm.host not in plan.hosts:
            add(
                vm.line,
                f"{where}: host {vm.host!r} is not one of the plan's hosts "
                f"({', '.join(plan.hosts)})",
            )
        try:
            vm.spec(vm.host or "placeholder", "placeholder")
        except SettingsError as exc:
            add(vm.line, f"{where}: {exc}")
    return found
