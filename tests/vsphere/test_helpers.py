"""The pure helpers of the pyvmomi backend: disk keys and locators, VM questions, fault messages,
server addresses. The simulator ignores disk locators and never asks questions, so these are
checked here on pyVmomi data objects."""

from __future__ import annotations

import http.client
import ssl
from xml.parsers.expat import ExpatError

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyVmomi import vim, vmodl

from liverecovery.errors import BackendError, SettingsError, VSphereError
from liverecovery.vsphere.connection import parse_server
from liverecovery.vsphere.faults import describe_fault, fault_name, translate
from liverecovery.vsphere.relocation import answer_for_question, disk_keys, relocate_spec

CONTROLLERS = {
    "scsi": [
        vim.vm.device.ParaVirtualSCSIController,
        vim.vm.device.VirtualLsiLogicController,
        vim.vm.device.VirtualLsiLogicSASController,
        vim.vm.device.VirtualBusLogicController,
    ],
    "sata": [vim.vm.device.VirtualAHCIController],
    "ide": [vim.vm.device.VirtualIDEController],
    "nvme": [vim.vm.device.VirtualNVMEController],
}

layouts = st.dictionaries(
    keys=st.tuples(st.sampled_from(sorted(CONTROLLERS)), st.integers(0, 3)),
    values=st.tuples(st.integers(0, 3), st.sets(st.integers(0, 15), max_size=4)),
    max_size=6,
)


def build_devices(
    layout: dict[tuple[str, int], tuple[int, set[int]]],
) -> tuple[list[vim.vm.device.VirtualDevice], dict[str, int]]:
    """Controllers and disks for ``layout``, and the .vmx key each disk should get."""
    devices: list[vim.vm.device.VirtualDevice] = [
        vim.vm.device.VirtualPCIController(key=100, busNumber=0),
        vim.vm.device.VirtualCdrom(key=3000, controllerKey=200, unitNumber=0),
    ]
    expected: dict[str, int] = {}
    next_key = 1000
    for (kind, bus), (flavour, units) in sorted(layout.items()):
        classes = CONTROLLERS[kind]
        controller_key = next_key
        next_key += 1
        devices.append(classes[flavour % len(classes)](key=controller_key, busNumber=bus))
        for unit in sorted(units):
            disk_key = next_key
            next_key += 1
            devices.append(
                vim.vm.device.VirtualDisk(
                    key=disk_key, controllerKey=controller_key, unitNumber=unit
                )
            )
            expected[f"{kind}{bus}:{unit}"] = disk_key
    return devices, expected


@given(layouts)
def test_disk_keys_name_disks_as_the_vmx_does(
    layout: dict[tuple[str, int], tuple[int, set[int]]],
) -> None:
    devices, expected = build_devices(layout)
    assert disk_keys(devices) == expected


@given(layouts, st.data())
def test_relocate_spec_gives_every_disk_a_locator(
    layout: dict[tuple[str, int], tuple[int, set[int]]], data: st.DataObject
) -> None:
    devices, expected = build_devices(layout)
    home = vim.Datastore("datastore-home")
    others = [vim.Datastore(f"datastore-{i}") for i in range(3)]
    chosen = data.draw(
        st.dictionaries(st.sampled_from(sorted(expected) or ["-"]), st.sampled_from(others))
    )
    chosen = {k: v for k, v in chosen.items() if k in expected}
    spec = relocate_spec("vm", devices, home, chosen)
    assert spec.datastore == home
    if not chosen:
        assert list(spec.disk) == []
        return
    placed = {locator.diskId: locator.datastore for locator in spec.disk}
    assert placed == {key: chosen.get(vmx, home) for vmx, key in expected.items()}


def test_relocate_spec_rejects_unknown_disk_keys() -> None:
    devices, _ = build_devices({("scsi", 0): (0, {0, 1})})
    with pytest.raises(VSphereError) as caught:
        relocate_spec("web01", devices, vim.Datastore("ds-1"), {"scsi0:2": vim.Datastore("ds-2")})
    assert caught.value.fault == "InvalidArgument"
    assert "web01 has no disk scsi0:2" in str(caught.value)
    assert "scsi0:0, scsi0:1" in str(caught.value)


# -- VM questions --------------------------------------------------------------------------------


def uuid_question(message_id: str = "msg.uuid.altered") -> vim.vm.QuestionInfo:
    choices = [
        vim.ElementDescription(key="0", label="button.uuid.cancel", summary="Cancel"),
        vim.ElementDescription(key="1", label="button.uuid.moveTheVM", summary="I Moved It"),
        vim.ElementDescription(key="2", label="button.uuid.copyTheVM", summary="I Copied It"),
    ]
    return vim.vm.QuestionInfo(
        id="q-1",
        text="This virtual machine might have been moved or copied.",
        choice=vim.option.ChoiceOption(choiceInfo=choices, defaultIndex=0),
        message=[vim.vm.Message(id=message_id, text="")],
    )


def test_the_moved_or_copied_question_is_answered_moved() -> None:
    assert answer_for_question(uuid_question()) == "1"


def test_other_questions_are_left_to_a_human() -> None:
    question = vim.vm.QuestionInfo(
        id="q-2",
        text="The disk is full. Retry?",
        choice=vim.option.ChoiceOption(
            choiceInfo=[vim.ElementDescription(key="0", label="Retry", summary="Retry")]
        ),
        message=[vim.vm.Message(id="msg.hbacommon.outofspace", text="")],
    )
    assert answer_for_question(question) is None


# -- faults --------------------------------------------------------------------------------------


def test_fault_keeps_type_and_details() -> None:
    fault = vim.fault.InvalidPowerState(
        msg="*types.InvalidPowerState", requestedState="poweredOn", existingState="poweredOn"
    )
    assert fault_name(fault) == "InvalidPowerState"
    assert describe_fault(fault) == "requestedState=poweredOn, existingState=poweredOn"
    error = translate(fault, "vsphere.power_on", "vc:443", "VM web (vm-1)")
    assert isinstance(error, VSphereError)
    assert (error.fault, error.operation) == ("InvalidPowerState", "vsphere.power_on")
    assert str(error) == (
        "vsphere.power_on of VM web (vm-1) on vc:443 failed: InvalidPowerState: "
        "requestedState=poweredOn, existingState=poweredOn"
    )


def test_fault_message_and_cause_are_kept() -> None:
    cause = vim.fault.FileNotFound(msg="no such file", file="[ds] vm/vm.nvram")
    fault = vim.fault.InvalidDatastore(
        msg="Cannot open the datastore",
        faultMessage=[vmodl.LocalizableMessage(key="k", message="datastore lr-1 is gone")],
        faultCause=cause,
        datastore=vim.Datastore("datastore-7"),
        name="lr-1",
    )
    text = describe_fault(fault)
    assert text.startswith("Cannot open the datastore; datastore lr-1 is gone; ")
    assert "datastore=datastore-7" in text and "name=lr-1" in text
    assert text.endswith("caused by FileNotFound: no such file; file=[ds] vm/vm.nvram")


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (
            ConnectionRefusedError(111, "Connection refused"),
            "cannot talk to vc:443: Connection refused",
        ),
        (http.client.RemoteDisconnected("closed"), "cannot talk to vc:443"),
        (TimeoutError("timed out"), "vc:443 did not answer in time"),
        (ExpatError("not well-formed"), "malformed SOAP response"),
        (ssl.SSLError(1, "wrong version number"), "TLS error with vc:443"),
    ],
)
def test_transport_failures_are_backend_errors(exc: BaseException, needle: str) -> None:
    error = translate(exc, "vsphere.connect", "vc:443")
    assert type(error) is BackendError
    assert error.operation == "vsphere.connect"
    assert needle in str(error)


def test_certificate_failure_says_how_to_fix_it() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    error = translate(exc, "vsphere.connect", "vc:443")
    assert type(error) is BackendError
    assert "not trusted (self-signed certificate)" in str(error)
    assert "ca_file=" in str(error) and "insecure=True" in str(error)


def test_programming_errors_are_not_translated() -> None:
    assert translate(ValueError("bug"), "vsphere.connect", "vc:443") is None
    assert translate(KeyError("bug"), "vsphere.connect", "vc:443") is None


# -- server addresses ----------------------------------------------------------------------------

hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
)


@given(
    hosts, st.none() | st.integers(1, 65535), st.booleans(), st.sampled_from(["", "/sdk", "/sdk/"])
)
def test_server_addresses_parse(host: str, port: int | None, scheme: bool, path: str) -> None:
    text = ("https://" if scheme else "") + host + (f":{port}" if port else "") + path
    assert parse_server(text, None) == (host, port or 443, "/sdk")


def test_explicit_port_wins_and_ipv6_works() -> None:
    assert parse_server("https://[::1]:8443/sdk", None) == ("::1", 8443, "/sdk")
    assert parse_server("vc.example", 9443) == ("vc.example", 9443, "/sdk")


@pytest.mark.parametrize("bad", ["", "  ", "http://vc", "https://:443", "vc:99999", "vc:x"])
def test_bad_server_addresses_are_settings_errors(bad: str) -> None:
    with pytest.raises(SettingsError):
        parse_server(bad, None)
