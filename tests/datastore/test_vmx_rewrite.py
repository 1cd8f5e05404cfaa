"""The .vmx rewrite's network map, and the port groups preflight reads from a .vmx."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from liverecovery.catalog.vmx import VmxFile
from liverecovery.datastore.vmx_rewrite import VmxOptions, nic_networks, rewrite_vmx

VMX = b"""\
.encoding = "UTF-8"
displayName = "web01"
ethernet0.present = "TRUE"
ethernet0.networkName = "VM Network"
Ethernet1.Present = "TRUE"
Ethernet1.NetworkName = "Backup Net"
ethernet2.present = "FALSE"
ethernet2.networkName = "Gone"
ethernet3.networkName = "VM Network"
"""


def test_nic_networks_reads_the_present_nics_in_any_case() -> None:
    assert nic_networks(VMX) == {
        "ethernet0": "VM Network",
        "ethernet1": "Backup Net",
        "ethernet3": "VM Network",
    }
    assert nic_networks(VMX, {"VM Network": "DR"}) == {
        "ethernet0": "DR",
        "ethernet1": "Backup Net",
        "ethernet3": "DR",
    }


def test_the_network_map_rewrites_only_the_mapped_port_groups() -> None:
    out = rewrite_vmx(VMX, {}, VmxOptions(network_map={"VM Network": "DR Net", "Nope": "X"}))
    doc = VmxFile.parse(out)
    assert doc.get("ethernet0.networkName") == "DR Net"
    assert doc.get("ethernet3.networkName") == "DR Net"
    assert doc.get("ethernet1.networkName") == "Backup Net"
    assert doc.get("ethernet2.networkName") == "Gone"  # not present: left alone
    # Every other line is kept byte for byte.
    changed = [a for a, b in zip(VMX.splitlines(), out.splitlines(), strict=True) if a != b]
    assert changed == [
        b'ethernet0.networkName = "VM Network"',
        b'ethernet3.networkName = "VM Network"',
    ]
    assert rewrite_vmx(VMX, {}, VmxOptions()) == VMX


@given(
    names=st.lists(
        st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=12),
        min_size=1,
        max_size=4,
    ),
    data=st.data(),
)
def test_the_rewritten_vmx_names_the_mapped_networks(names: list[str], data: st.DataObject) -> None:
    doc = VmxFile.parse(b"")
    for i, name in enumerate(names):
        doc.set(f"ethernet{i}.present", "TRUE")
        doc.set(f"ethernet{i}.networkName", name)
    vmx = doc.to_bytes()
    mapping = data.draw(st.dictionaries(st.sampled_from(names), st.text(min_size=1, max_size=8)))
    out = rewrite_vmx(vmx, {}, VmxOptions(network_map=mapping))
    assert nic_networks(out) == nic_networks(vmx, mapping)
    assert nic_networks(vmx) == {f"ethernet{i}": n for i, n in enumerate(names)}
