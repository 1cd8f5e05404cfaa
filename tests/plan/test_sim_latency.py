"""The simulated vCenter's modelled task latency (benchmarks/plan.py ``--vsphere-latency``):
zero unless asked; when asked, each mount, registration and power-on waits its figure first."""

from __future__ import annotations

import random
from typing import Any

import pytest

from liverecovery.backends import VmRef
from liverecovery.errors import SettingsError
from liverecovery.sim import hosts as sim_hosts
from liverecovery.sim.hosts import HostRouter
from liverecovery.sim.latency import TaskLatency, parse_latency

pytestmark = pytest.mark.anyio


class Host:
    """Records the tasks it runs, in order, with the sleeps the router took before each."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def mount_nfs_datastore(self, host: str, rh: str, rp: str, ds: str) -> str:
        self.log.append("mount")
        return ds

    async def register_vm(self, host: str, vmx: str, name: str, **kw: Any) -> VmRef:
        self.log.append("register")
        return VmRef(moref="vm-1", name=name, vmx_path=vmx)

    async def power_on(self, vm: VmRef) -> None:
        self.log.append(f"power_on {vm.moref}")


async def run_tasks(monkeypatch: pytest.MonkeyPatch, latency: TaskLatency | None) -> list[str]:
    log: list[str] = []

    async def sleep(seconds: float) -> None:
        log.append(f"sleep {seconds}")

    monkeypatch.setattr(sim_hosts.anyio, "sleep", sleep)
    router: HostRouter[Any] = HostRouter({"esx-1": Host(log)}, latency=latency)
    await router.mount_nfs_datastore("esx-1", "127.0.0.1", "/", "fre")
    ref = await router.register_vm("esx-1", "[fre] vm/vm.vmx", "vm")
    await router.power_on(ref)
    return log


async def test_no_latency_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await run_tasks(monkeypatch, None) == ["mount", "register", "power_on vm-1"]


async def test_each_task_waits_its_figure_first(monkeypatch: pytest.MonkeyPatch) -> None:
    latency = parse_latency("mount=0.3, register=0.25,power_on=1.5")
    assert await run_tasks(monkeypatch, latency) == [
        "sleep 0.3",
        "mount",
        "sleep 0.25",
        "register",
        "sleep 1.5",
        "power_on vm-1",
    ]


def test_jitter_varies_the_wait_around_its_mean_never_below_zero() -> None:
    latency = TaskLatency(power_on_s=1.0, jitter=0.5)
    rng = random.Random(3)
    waits = [latency.delay("power_on", rng) for _ in range(2000)]
    assert min(waits) >= 0.0 and len(set(waits)) > 1000
    assert 0.9 < sum(waits) / len(waits) < 1.1
    assert TaskLatency(register_s=0.4).delay("register", rng) == 0.4
    assert TaskLatency().zero and not TaskLatency(mount_s=0.1).zero


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("boot=1", "'boot=1': expected key=seconds"),
        ("power_on", "'power_on': expected key=seconds"),
        ("register=soon", "register: 'soon' is not a number"),
        ("mount=-1", "mount: -1.0 is not a finite number >= 0"),
        ("mount=nan", "mount: nan is not a finite number >= 0"),
        ("jitter=inf", "jitter: inf is not a finite number >= 0"),
    ],
)
def test_bad_latency_text_is_refused_naming_the_item(text: str, problem: str) -> None:
    with pytest.raises(SettingsError, match="vSphere latency") as info:
        parse_latency(text)
    assert problem in str(info.value)
