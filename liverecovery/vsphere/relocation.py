"""Pure helpers for the storage vMotion spec and power-on questions: pyVmomi data in, data out.

Kept apart from the client so the disk-to-locator mapping, which the simulator cannot check (it
ignores disk locators), is tested on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyVmomi import vim

from liverecovery.errors import VSphereError
from liverecovery.vsphere.vmomi import new

__all__ = ["answer_for_question", "disk_keys", "relocate_spec"]


def _controller_prefix(controller: vim.vm.device.VirtualDevice) -> str | None:
    if isinstance(controller, vim.vm.device.VirtualSCSIController):
        return "scsi"
    if isinstance(controller, vim.vm.device.VirtualIDEController):
        return "ide"
    if isinstance(controller, vim.vm.device.VirtualSATAController):
        return "sata"
    if isinstance(controller, vim.vm.device.VirtualNVMEController):
        return "nvme"
    return None


def disk_keys(devices: Sequence[vim.vm.device.VirtualDevice]) -> dict[str, int]:
    """Map each virtual disk's .vmx key (``scsi0:1``, ``sata0:0``...) to its vSphere device key.

    The .vmx key is the controller type and bus number, then the disk's unit number: the same
    name the backup's ``DiskInfo.key`` uses.
    """
    controllers: dict[int, str] = {}
    for device in devices:
        prefix = _controller_prefix(device)
        bus = getattr(device, "busNumber", None)
        if prefix is not None and isinstance(bus, int):
            controllers[device.key] = f"{prefix}{bus}"
    keys: dict[str, int] = {}
    for device in devices:
        if not isinstance(device, vim.vm.device.VirtualDisk):
            continue
        controller = controllers.get(device.controllerKey) if device.controllerKey else None
        if controller is None or device.unitNumber is None:
            continue
        keys[f"{controller}:{device.unitNumber}"] = device.key
    return keys


def relocate_spec(
    vm_name: str,
    devices: Sequence[vim.vm.device.VirtualDevice],
    datastore: vim.Datastore,
    disk_datastores: Mapping[str, vim.Datastore] | None = None,
) -> vim.vm.RelocateSpec:
    """A storage vMotion spec moving the VM's files to ``datastore``.

    ``disk_datastores`` maps .vmx disk keys to the datastore each disk goes to; disks not named
    follow ``datastore``. With it, every disk gets a locator, as vSphere wants when disks are
    spread over datastores.

    :raises VSphereError: a key of ``disk_datastores`` names no disk of the VM (fault
        ``InvalidArgument``, as vSphere itself reports a bad locator).
    """
    spec = new(vim.vm.RelocateSpec)
    spec.datastore = datastore
    if not disk_datastores:
        return spec
    keys = disk_keys(devices)
    unknown = sorted(set(disk_datastores) - set(keys))
    if unknown:
        raise VSphereError(
            f"VM {vm_name} has no disk {', '.join(unknown)}; "
            f"its disks are {', '.join(sorted(keys)) or 'none'}",
            operation="vsphere.relocate",
            fault="InvalidArgument",
        )
    locators = []
    for vmx_key, device_key in sorted(keys.items()):
        locator = new(vim.vm.RelocateSpec.DiskLocator)
        locator.diskId = device_key
        locator.datastore = disk_datastores.get(vmx_key, datastore)
        locators.append(locator)
    spec.disk = locators
    return spec


# ESXi asks this when a VM's files moved since it last ran; a recovered VM is the same VM, so it
# keeps its UUID and MAC addresses ("I moved it"), as a restore in place would.
_UUID_QUESTION_PREFIX = "msg.uuid.altered"


def answer_for_question(question: vim.vm.QuestionInfo) -> str | None:
    """The choice key to answer a pending VM question with, or None when it must not be answered.

    Only the "moved or copied?" question is answered ("moved"); any other question needs a human.
    """
    ids = [m.id for m in question.message or () if m.id]
    text = (question.text or "").lower()
    if not any(i.startswith(_UUID_QUESTION_PREFIX) for i in ids) and "moved or copied" not in text:
        return None
    choices = question.choice.choiceInfo if question.choice else []
    for choice in choices:
        label = f"{choice.label} {choice.summary}".lower()
        if "move" in label:
            return str(choice.key)
    return None
