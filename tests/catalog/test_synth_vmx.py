"""A .vmx synthesized from a configuration reads back as the same configuration."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from liverecovery.catalog.synth_vmx import guest_id_to_vmx, synthesize_vmx
from liverecovery.catalog.vm_config import DiskRef, VmConfig, config_from_vmx
from liverecovery.catalog.vmx import VmxFile

buses = st.sampled_from(
    [("scsi", "lsilogic"), ("scsi", "pvscsi"), ("sata", "sata"), ("ide", "ide"), ("nvme", "nvme")]
)


@st.composite
def configs(draw: st.DrawFn) -> VmConfig:
    disks = {}
    for (bus, adapter), ctrl, unit, name in draw(
        st.lists(
            st.tuples(
                buses, st.integers(0, 3), st.integers(0, 15), st.text(min_size=1, max_size=20)
            ),
            max_size=6,
        )
    ):
        key = f"{bus}{ctrl}:{unit}"
        if any(k.startswith(f"{bus}{ctrl}:") and a != adapter for k, a, _ in disks.values()):
            continue  # one adapter type per controller
        disks[key] = (key, adapter, f"{name.replace('/', '_').replace(chr(92), '_')}.vmdk")
    refs = tuple(DiskRef(k, f, a) for k, a, f in disks.values())
    order = {"ide": 0, "sata": 1, "scsi": 2, "nvme": 3}

    def sort_key(d: DiskRef) -> tuple[int, int, int]:
        ctrl, unit = d.key.split(":")
        bus = ctrl.rstrip("0123456789")
        return order[bus], int(ctrl[len(bus) :]), int(unit)

    return VmConfig(
        display_name=draw(st.text(max_size=30)),
        guest_os=draw(st.sampled_from(["debian11-64", "windows2019srv-64", "other"])),
        memory_mb=draw(st.integers(0, 1 << 20)),
        num_cpus=draw(st.integers(1, 128)),
        disks=tuple(sorted(refs, key=sort_key)),
        nvram_name=draw(st.one_of(st.none(), st.just("x.nvram"))),
    )


@given(configs())
def test_round_trip(config: VmConfig) -> None:
    back = config_from_vmx(VmxFile.parse(synthesize_vmx(config)))
    assert back == config


def test_guest_ids() -> None:
    assert guest_id_to_vmx("debian10_64Guest") == "debian10-64"
    assert guest_id_to_vmx("ubuntu64Guest") == "ubuntu-64"
    assert guest_id_to_vmx("windows9Server64Guest") == "windows9Server-64"
    assert guest_id_to_vmx("otherGuest") == "other"
    assert guest_id_to_vmx("debian11-64") == "debian11-64"
