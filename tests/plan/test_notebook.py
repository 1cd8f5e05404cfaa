"""A notebook shows a plan's table updating: a real notebook, written here, executed by nbclient
in a real IPython kernel (ipykernel). The notebook runs a plan of several VMs on several
simulated ESX hosts (the embedded environment, like ``demo --vms``) and shows it with
``liverecovery.show_plan``; the executed notebook's outputs must hold one display that was
created and then updated in place, whose last table lists every VM in its final state, and
nothing on stderr."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest
from jupyter_client.manager import KernelManager

pytestmark = pytest.mark.timeout(240)

VMS = ("db-1", "db-2", "app-1", "app-2", "app-3", "web-1")

SETUP = """\
from liverecovery import BootGroup, GroupWait, LiveRecovery, Placement, Plan, PlanVm, Settings
from liverecovery import show_plan
from liverecovery.config import MiB
from liverecovery.sim.hosts import embedded_hosts
from liverecovery.testing import MemoryCatalog

work = WORK
vms = VMS
catalog = MemoryCatalog()
for name in vms:
    catalog.add_vm(name, disk_sizes=(16 * MiB,), data_per_disk=1 * MiB)
plan = Plan(
    name="nb",
    groups=(BootGroup("db", wait=GroupWait.HEARTBEAT), BootGroup("app"), BootGroup("web")),
    vms=tuple(
        PlanVm(vm=name, group=name.split("-")[0], datastore="datastore1", esx_address="127.0.0.1")
        for name in vms
    ),
    hosts=("esx-a", "esx-b", "esx-c"),
    placement=Placement.ROUND_ROBIN,
    max_in_flight=2,
)
settings = Settings(
    job_results_dir=work / "results",
    migration_trigger="delay",
    serve_before_migrate_s=0.3,
    job_space_floor_bytes=0,
    job_space_fraction=0.0,
    compensation_retry_delay_s=0,
)
"""

RUN = """\
async with (
    embedded_hosts(work, catalog, hosts=plan.hosts, settings=settings) as env,
    LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
):
    for host in env.hosts.hosts.values():
        host.guest.heartbeat_delay_s = 0.3
    run = await lr.run_plan(plan)
    summary = await show_plan(run, interval_s=0.1)
summary["state"]
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short private folder for the kernel's IPC sockets (a Unix socket path has at most 107
    bytes) and its IPython profile, so two runs of the suite at once share nothing."""
    path = Path(tempfile.mkdtemp(prefix="lr-nb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _Recording(nbclient.NotebookClient):
    """Records every display message the kernel sends: ``(msg_type, display_id, text)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.displays: list[tuple[str, str, str]] = []

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        kind = msg["header"]["msg_type"]
        if kind in ("display_data", "update_display_data"):
            content = msg["content"]
            self.displays.append(
                (
                    kind,
                    content.get("transient", {}).get("display_id", ""),
                    content.get("data", {}).get("text/plain", ""),
                )
            )
        return super().process_message(msg, cell, cell_index)


def _execute(nb: Any, work: Path, short: Path) -> tuple[Any, list[tuple[str, str, str]]]:
    env = dict(os.environ)
    env.update(
        IPYTHONDIR=str(short / "ipython"),
        JUPYTER_RUNTIME_DIR=str(short / "runtime"),
        JUPYTER_DATA_DIR=str(short / "data"),
        JUPYTER_CONFIG_DIR=str(short / "config"),
        MPLBACKEND="agg",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    # IPC, not TCP: no ports to pick, so two kernels started at once cannot race for one.
    km = KernelManager(
        kernel_name="python3",
        transport="ipc",
        ip=str(short / "k"),
        connection_file=str(short / "kernel.json"),
    )
    client = _Recording(
        nb, km=km, timeout=150, startup_timeout=60, resources={"metadata": {"path": str(work)}}
    )
    try:
        # cleanup_kc: shut the kernel down afterwards even though the client does not own km
        return client.execute(env=env, cwd=str(work), cleanup_kc=True), client.displays
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        assert not km.is_alive()


def _outputs(nb: Any) -> list[Any]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_a_notebook_shows_the_plan_table_updating(tmp_path: Path, short_dir: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from pathlib import Path\n"
            f"WORK = Path({str(work)!r})\n"
            f"VMS = {VMS!r}\n"
            "import liverecovery, sys\n"
            "print(liverecovery.__file__, file=sys.stdout)"
        ),
        nbformat.v4.new_code_cell(SETUP),
        nbformat.v4.new_code_cell(RUN),
    ]
    executed, displays = _execute(nb, work, short_dir)
    nbformat.validate(executed)
    outputs = _outputs(executed)

    errors = [o for o in outputs if o.output_type == "error"]
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not errors and not stderr, (errors, stderr)
    imported = executed.cells[0].outputs[0].text.strip()
    assert Path(imported).is_relative_to(Path(__file__).parents[2]), imported

    shown = [o for o in executed.cells[2].outputs if o.output_type == "display_data"]
    assert len(shown) == 1, executed.cells[2].outputs
    # created once, then updated in place (the same display id), several times
    assert displays[0][0] == "display_data", displays
    display_id = displays[0][1]
    assert display_id
    updates = [d for d in displays[1:] if d[0] == "update_display_data"]
    assert len(updates) >= 2 and len(updates) == len(displays) - 1, displays
    assert all(d[1] == display_id for d in updates)
    assert all(a[2] != b[2] for a, b in itertools.pairwise(displays)), "a table sent twice"
    # the notebook's output holds the last update: the final table
    text = shown[0].data["text/plain"]
    assert text == displays[-1][2]
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["VM", "GROUP", "HOST", "STATE"]
    states = {line.split()[0]: line.split()[3] for line in lines[1:]}
    assert states == dict.fromkeys(VMS, "completed"), text
    result = [o for o in executed.cells[2].outputs if o.output_type == "execute_result"]
    assert result and result[0].data["text/plain"] == "'completed'"
