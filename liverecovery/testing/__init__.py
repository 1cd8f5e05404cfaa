"""Test support for liverecovery and for the products that embed it.

In-memory backends that keep the real systems' rules, with fault injection at every call.
"""

from liverecovery.testing.faults import Fault, FaultKind, FaultPlan, Pause
from liverecovery.testing.faulty import faulty
from liverecovery.testing.memory import (
    MemoryBackup,
    MemoryBlockCache,
    MemoryCatalog,
    MemoryDisk,
    MemoryExporter,
    MemoryOverlay,
    MemoryVSphere,
    VmState,
    memory_backends,
    sample_vmx,
)

__all__ = [
    "Fault",
    "FaultKind",
    "FaultPlan",
    "MemoryBackup",
    "MemoryBlockCache",
    "MemoryCatalog",
    "MemoryDisk",
    "MemoryExporter",
    "MemoryOverlay",
    "MemoryVSphere",
    "Pause",
    "VmState",
    "faulty",
    "memory_backends",
    "sample_vmx",
]
