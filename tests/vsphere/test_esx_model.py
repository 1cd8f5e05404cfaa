"""PyvmomiVSphereClient against a simulated standalone ESXi host (no vCenter): the same calls
work when the client talks to the host agent directly (ha-datacenter, the host's own pool)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from liverecovery.errors import VSphereError
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

from .conftest import LOCAL_DS, Inventory, VmFiles

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

VCSIM_ARGS = ["-esx"]
ESX_HOST = "localhost.localdomain"


async def test_full_sequence_on_a_standalone_host(
    client: PyvmomiVSphereClient,
    inventory: Inventory,
    datastore_name: Callable[[], str],
    make_vm_files: Callable[..., VmFiles],
) -> None:
    assert client.service_instance.RetrieveContent().about.apiType == "HostAgent"
    baseline = inventory.snapshot()
    ds = datastore_name()
    files = make_vm_files(ds)
    with anyio.fail_after(30):
        await client.mount_nfs_datastore(ESX_HOST, "192.0.2.10", "/export", ds)
        assert inventory.datastore(ds, ESX_HOST).summary.type == "NFS"
        vm = await client.register_vm(ESX_HOST, files.vmx_path, files.name)
        assert (await client.find_folder(ESX_HOST)).parent.name == "ha-datacenter"
        await client.power_on(vm)
        with pytest.raises(VSphereError) as caught:
            await client.power_on(vm)
        assert caught.value.fault == "InvalidPowerState"
        moved = await client.relocate(vm, LOCAL_DS)
        assert [d.name for d in inventory.vm(files.name).datastore] == [LOCAL_DS]
        await client.power_off(moved)
        await client.unregister_vm(moved)
        await client.unmount_datastore(ESX_HOST, ds)
    assert inventory.snapshot() == baseline
