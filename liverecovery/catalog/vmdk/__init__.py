"""A pure-Python VMDK reader: every hosted subformat, delta chains, allocation maps."""

from liverecovery.catalog.vmdk.descriptor import (
    Descriptor,
    ExtentLine,
    ExtentType,
    parse_descriptor,
)
from liverecovery.catalog.vmdk.disk import VmdkDisk, open_vmdk
from liverecovery.catalog.vmdk.extents import FileWindow

__all__ = [
    "Descriptor",
    "ExtentLine",
    "ExtentType",
    "FileWindow",
    "VmdkDisk",
    "open_vmdk",
    "parse_descriptor",
]
