"""Plan files: every problem listed at once with its line; the order of groups; pure."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.errors import PlanError
from liverecovery.plan.model import FailurePolicy, GroupWait, Placement, Plan
from liverecovery.plan.parse import group_cycle, load_plan, parse_plan, reference_problems

GOOD = """\
[plan]
name = "site-a"
hosts = ["esx01", "esx02"]
placement = "round-robin"
max_in_flight = 4

[defaults]
datastore = "ds1"

[[group]]
name = "db"
wait = "heartbeat"
delay_s = 5
on_failure = "stop"

[[group]]
name = "app"

[[vm]]
name = "sql01"
group = "db"
host = "esx02"

[[vm]]
name = "web01"
group = "app"
disconnect_nics = true
"""


def parse(text: str, source: str = "p.toml") -> Plan:
    return parse_plan(tomllib.loads(text), source=source, text=text)


def test_a_good_plan() -> None:
    plan = parse(GOOD)
    assert plan.name == "site-a"
    assert plan.placement is Placement.ROUND_ROBIN
    assert plan.max_in_flight == 4
    db, _app = plan.groups
    assert (db.wait, db.delay_s, db.on_failure) == (GroupWait.HEARTBEAT, 5.0, FailurePolicy.STOP)
    assert plan.predecessors() == {"db": (), "app": ("db",)}
    sql, web = plan.vms
    assert (sql.host, sql.datastore, sql.line) == ("esx02", "ds1", 19)
    assert (web.host, web.disconnect_nics) == (None, True)
    spec = web.spec("esx01", "job-1")
    assert (spec.vm, spec.esx_host, spec.datastore, spec.job_id) == (
        "web01",
        "esx01",
        "ds1",
        "job-1",
    )
    assert Plan.from_json(plan.to_json()) == plan


def test_every_problem_is_listed_at_once_with_its_line(tmp_path: Path) -> None:
    text = """\
[plan]
placement = "sideways"
max_in_flight = 0

[[group]]
name = "db"
after = ["app"]
wait = "soon"

[[group]]
name = "app"
after = ["db"]

[[group]]
name = "db"

[[vm]]
name = "sql01"
group = "db"
host = "esx01"
datastore = "ds1"

[[vm]]
name = "sql01"
group = "db"
host = "esx01"
datastore = "ds1"

[[vm]]
name = "web01"
group = "nowhere"
datastore = "ds1"
host = "esx01"
colour = "blue"

[[vm]]
name = "mail01"
group = "app"
new_bios_uuid = "yes"
datastore = "ds1"
"""
    path = tmp_path / "plan.toml"
    path.write_text(text)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    problems = info.value.problems
    joined = "\n".join(problems)
    expected = {
        2: "placement must be one of",
        3: "max_in_flight must be an integer",
        8: "wait must be one of",
        15: "group 'db' is declared twice (first at line 5)",
        5: "cycle: 'db' -> 'app' -> 'db'",
        24: "vm 'sql01' is listed twice (first at line 17)",
        31: "unknown group 'nowhere'",
        34: "unknown key 'colour'",
        39: "new_bios_uuid must be true or false",
        36: "host is missing",
    }
    for line, text_part in expected.items():
        assert any(p.startswith(f"{path}:{line}: ") and text_part in p for p in problems), (
            f"line {line}: {text_part!r} not in\n{joined}"
        )
    assert len(problems) == len(expected), joined
    assert str(path) in str(info.value)


def test_toml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[plan]\nname = "x"\n[[vm]\n')
    with pytest.raises(PlanError, match=r"bad.toml: line 3"):
        load_plan(path)


def test_a_plan_without_vms_or_with_a_missing_file() -> None:
    with pytest.raises(PlanError, match="lists no VM"):
        parse("[plan]\n")
    with pytest.raises(PlanError, match="cannot read the plan"):
        load_plan("/nonexistent/plan.toml")


def test_reference_problems_name_vms_and_hosts_with_lines() -> None:
    plan = parse(GOOD)
    found = reference_problems(plan, vm_names=["web01"], host_names=["esx01"])
    assert found == [
        "p.toml:3: host 'esx02' is not in the vSphere inventory",
        "p.toml:19: vm 'sql01' is not in the backup catalog",
    ]
    assert (
        reference_problems(plan, vm_names=["web01", "sql01"], host_names=["esx01", "esx02"]) == []
    )


def test_after_overrides_file_order_and_empty_after_starts_at_once() -> None:
    text = GOOD.replace('name = "app"\n', 'name = "app"\nafter = []\n')
    assert parse(text).predecessors() == {"db": (), "app": ()}


# -- properties ----------------------------------------------------------------------------------

names = st.sampled_from([f"g{i}" for i in range(6)])


@given(st.dictionaries(names, st.lists(names, max_size=3).map(tuple), min_size=1))
def test_group_cycle_finds_a_real_cycle_or_an_order_exists(
    preds: dict[str, tuple[str, ...]],
) -> None:
    cycle = group_cycle(preds)
    if cycle is not None:
        assert cycle[0] == cycle[-1]
        for a, b in itertools.pairwise(cycle):
            assert b in preds[a]
        return
    # No cycle: a topological order exists (Kahn).
    remaining = {g: {p for p in ps if p in preds} for g, ps in preds.items()}
    while remaining:
        free = [g for g, ps in remaining.items() if not ps]
        assert free, remaining
        for g in free:
            del remaining[g]
        for ps in remaining.values():
            ps.difference_update(free)


@st.composite
def plan_texts(draw: st.DrawFn) -> tuple[str, int]:
    """A plan TOML with a known number of planted problems, one per VM at most."""
    groups = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    lines = ['[defaults]\ndatastore = "ds1"\nhost = "esx01"\n']
    for g in groups:
        lines.append(f'[[group]]\nname = "{g}"\n')
    bad = 0
    vms = draw(st.lists(st.sampled_from(["ok", "group", "key", "bool"]), min_size=1, max_size=8))
    for i, kind in enumerate(vms):
        body = f'[[vm]]\nname = "vm{i}"\ngroup = "{groups[0]}"\n'
        if kind == "group":
            body = f'[[vm]]\nname = "vm{i}"\ngroup = "zz"\n'
        elif kind == "key":
            body += "wheels = 4\n"
        elif kind == "bool":
            body += 'disconnect_nics = "no"\n'
        bad += kind != "ok"
        lines.append(body)
    return "\n".join(lines), bad


@given(plan_texts())
def test_each_planted_problem_is_reported_once_on_its_line(case: tuple[str, int]) -> None:
    text, bad = case
    if not bad:
        assert len(parse(text).vms) >= 1
        return
    with pytest.raises(PlanError) as info:
        parse(text)
    problems = info.value.problems
    assert len(problems) == bad
    lines = text.splitlines()
    for p in problems:
        line = int(p.split(":")[1])
        assert 1 <= line <= len(lines)
        named = lines[line - 1]
        assert named.startswith(("group", "wheels", "disconnect_nics")), (p, named)


def test_a_plan_built_in_python_is_checked_like_a_file() -> None:
    from liverecovery import BootGroup, PlanVm
    from liverecovery.plan.parse import plan_problems

    plan = Plan(
        name="../etc",
        groups=(
            BootGroup("a", after=("b",)),
            BootGroup("b", after=("a", "c")),
            BootGroup("a"),
            BootGroup("d", delay_s=-1),
        ),
        vms=(
            PlanVm("x", "nope", "ds1"),
            PlanVm("x", "a", "ds1", host="esx01"),
            PlanVm("y", "b", "ds1", host="esx09"),
            PlanVm("z", "b", "ds1"),
        ),
        hosts=("esx01", "esx02", "esx01"),
        max_in_flight=0,
        source="notebook",
    )
    found = "\n".join(plan_problems(plan))
    for expected in (
        "notebook: the plan's name must be 1-40 letters",
        "max_in_flight must be an integer in [1, 1024], got 0",
        "hosts names 'esx01' twice",
        "group 'a' is declared twice",
        "group 'd': delay_s must be 0 or more",
        "group 'b': after names unknown group 'c'",
        "boot groups wait for each other in a cycle",
        "vm 'x': unknown group 'nope'",
        "vm 'x' is listed twice",
        "vm 'y': host 'esx09' is not one of the plan's hosts",
        "vm 'z': no host, and placement is explicit",
    ):
        assert expected in found, (expected, found)
    assert plan_problems(attrs.evolve(plan, vms=(), groups=())) == [
        "notebook: the plan's name must be 1-40 letters, digits, '.', '_' or '-', got '../etc'",
        "notebook: max_in_flight must be an integer in [1, 1024], got 0",
        "notebook: hosts names 'esx01' twice",
        "notebook: the plan has no boot group",
        "notebook: the plan lists no VM",
    ]


def test_a_parsed_plan_has_no_problems_as_a_value() -> None:
    from liverecovery.plan.parse import plan_problems

    plan = parse_plan(tomllib.loads(GOOD), source="good.toml", text=GOOD)
    assert plan_problems(plan) == []
    assert plan_problems(Plan.from_json(plan.to_json())) == []
