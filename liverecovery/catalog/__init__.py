"""Backup readers: VM folders and dated restore points, OVA exports, and every VMDK subformat."""

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.vm_config import DiskRef, VmConfig
from liverecovery.catalog.vmdk import VmdkDisk, open_vmdk

__all__ = ["DirectoryCatalog", "DiskRef", "VmConfig", "VmdkDisk", "open_vmdk"]
