"""DirectoryCatalog keeps each VM's restore points once read, and never serves a stale answer.

A plan looks each of its VMs up several times (preflight, staging, the job); reading the VM
folder, its .vmx and its disk headers again each time made a plan of N VMs cost O(N^2) scans.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.errors import CatalogError
from liverecovery.testing.vmdk_writer import write_monolithic_flat

pytestmark = pytest.mark.anyio

WINDOW = 0.05  # longer than a local file system's clock tick (<= 10 ms)


def settle() -> None:
    """Let the last change age past the racy window, so an answer read now can be kept."""
    time.sleep(WINDOW + 0.02)


def replace(path: Path, text: str) -> None:
    """Write ``text`` as a new file renamed over ``path`` (how backup tools publish files)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_vm(folder: Path, name: str, *, memory_mb: int = 1024, size: int = 1 << 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_monolithic_flat(folder, name, size, {})
    replace(
        folder / f"{name}.vmx",
        f'displayName = "{name}"\nmemSize = "{memory_mb}"\n'
        f'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "{name}.vmdk"\n',
    )


class Loads:
    """Counts the restore points a catalog reads from disk (its ``_load`` calls)."""

    def __init__(self, catalog: DirectoryCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = catalog._load

        async def counted(*args: Any) -> Any:
            self.count += 1
            return await original(*args)

        monkeypatch.setattr(catalog, "_load", counted)


async def test_a_vm_is_read_once_while_its_files_do_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        write_vm(tmp_path / f"vm{i}", f"vm{i}")
    settle()
    catalog = DirectoryCatalog(tmp_path, racy_window_s=WINDOW)
    loads = Loads(catalog, monkeypatch)
    point = await catalog.restore_point("vm1")
    for _ in range(5):
        assert await catalog.restore_point("vm1") == point
        assert (await catalog.read_file(point, "vm1.vmx")).startswith(b'displayName = "vm1"')
        (await catalog.open_disk(point, point.disks[0])).close()
    assert loads.count == 1
    await catalog.restore_point("vm2")
    assert loads.count == 2


async def test_a_removed_vm_is_never_served(tmp_path: Path) -> None:
    write_vm(tmp_path / "vm1", "vm1")
    settle()
    catalog = DirectoryCatalog(tmp_path, racy_window_s=WINDOW)
    point = await catalog.restore_point("vm1")
    shutil.rmtree(tmp_path / "vm1")
    with pytest.raises(CatalogError, match="no VM 'vm1'"):
        await catalog.restore_point("vm1")
    with pytest.raises(CatalogError, match="no VM 'vm1'"):
        await catalog.read_file(point, "vm1.vmx")
    with pytest.raises(CatalogError, match="no VM 'vm1'"):
        await catalog.open_disk(point, point.disks[0])


async def test_a_vm_removed_and_written_again_is_read_again(tmp_path: Path) -> None:
    write_vm(tmp_path / "vm1", "vm1", memory_mb=1024)
    settle()
    catalog = DirectoryCatalog(tmp_path, racy_window_s=WINDOW)
    assert (await catalog.restore_point("vm1")).memory_mb == 1024
    shutil.rmtree(tmp_path / "vm1")
    write_vm(tmp_path / "vm1", "vm1", memory_mb=4096, size=2 << 20)
    assert (await catalog.restore_point("vm1")).memory_mb == 4096
    assert (await catalog.restore_point("vm1")).disks[0].capacity_bytes == 2 << 20


async def test_a_new_restore_point_and_changed_files_are_seen(tmp_path: Path) -> None:
    vm = tmp_path / "db"
    write_vm(vm / "db-2024-05-01_22-00-00", "db")
    (vm / "db-2024-05-02_22-00-00").mkdir()  # being written: no .vmx yet
    settle()
    catalog = DirectoryCatalog(tmp_path, racy_window_s=WINDOW)
    assert (await catalog.restore_point("db")).point_id == "db-2024-05-01_22-00-00"
    write_vm(vm / "db-2024-05-02_22-00-00", "db", memory_mb=2048)  # the backup finished
    assert (await catalog.restore_point("db")).point_id == "db-2024-05-02_22-00-00"
    settle()
    assert (await catalog.restore_point("db")).memory_mb == 2048
    point = await catalog.restore_point("db")
    write_vm(vm / "db-2024-05-02_22-00-00", "db", memory_mb=3072)  # the .vmx replaced
    assert b'memSize = "3072"' in await catalog.read_file(point, "db.vmx")
    assert (await catalog.restore_point("db")).memory_mb == 3072
    settle()
    (vm / "db-2024-05-02_22-00-00" / "catalog.json").write_text('{"archived": true}')
    assert (await catalog.restore_point("db")).archived
    settle()
    (vm / "db-2024-05-02_22-00-00" / "db.nvram").write_bytes(b"NVRAM")
    assert (await catalog.restore_point("db")).nvram_name is None  # the .vmx names none
    shutil.rmtree(vm / "db-2024-05-02_22-00-00")
    assert (await catalog.restore_point("db")).point_id == "db-2024-05-01_22-00-00"


async def test_an_answer_read_while_its_files_change_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files changed within the racy window of a lookup may change again with the same stamp."""
    write_vm(tmp_path / "vm1", "vm1")
    catalog = DirectoryCatalog(tmp_path, racy_window_s=60.0)
    loads = Loads(catalog, monkeypatch)
    await catalog.restore_point("vm1")
    await catalog.restore_point("vm1")
    assert loads.count == 2


OPS = st.lists(
    st.tuples(
        st.sampled_from(("write", "remove", "point", "vmx", "lookup")),
        st.integers(0, 2),
        st.integers(1, 8),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_kept_answers_match_a_fresh_catalog(tmp_path_factory: Any, ops: Any) -> None:
    """Whatever happens to the folder between lookups, the answer is a fresh catalog's."""
    root = tmp_path_factory.mktemp("index")

    async def check() -> None:
        catalog = DirectoryCatalog(root, racy_window_s=WINDOW)
        for op, i, n in ops:
            vm = root / f"vm{i}"
            if op == "write":
                write_vm(vm, f"vm{i}", memory_mb=256 * n)
            elif op == "remove":
                shutil.rmtree(vm, ignore_errors=True)
            elif op == "point" and vm.is_dir():
                write_vm(vm / f"vm{i}-2024-05-0{n}_22-00-00", f"vm{i}", memory_mb=512 * n)
            elif op == "vmx" and (vm / f"vm{i}.vmx").exists():
                write_vm(vm, f"vm{i}", memory_mb=128 * n)
            if n % 2:
                settle()
            for name in ("vm0", "vm1", "vm2"):
                assert await answer(catalog, name) == await answer(DirectoryCatalog(root), name)

    anyio.run(check)


async def answer(catalog: DirectoryCatalog, name: str) -> object:
    try:
        return list(await catalog.restore_points(name))
    except CatalogError as exc:
        return exc.problem
