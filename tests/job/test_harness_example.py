"""The embedder example from docs/testing.md, run as written: a product's own backends
(here: the in-memory ones standing in for them) wrapped with ``faulty`` in the harness."""

from __future__ import annotations

from hypothesis import settings

from liverecovery import Backends
from liverecovery.testing import FaultPlan, faulty
from liverecovery.testing.harness import LiveRecoveryHarness
from liverecovery.testing.memory import (
    MemoryBlockCache,
    MemoryCatalog,
    MemoryExporter,
    MemoryVSphere,
)


class MyProductHarness(LiveRecoveryHarness):
    vms = ("web01", "db01")
    hosts = ("esx-a",)

    def make_backends(self, faults: FaultPlan) -> Backends:
        catalog = MemoryCatalog()  # your CatalogReader
        for vm in self.vms:
            catalog.add_vm(vm)
        vsphere = faulty(MemoryVSphere(hosts=self.hosts), faults, "vsphere")  # your VSphereClient
        return Backends(
            exporter=faulty(MemoryExporter(), faults, "exporter"),  # your NfsExporter
            catalog=faulty(catalog, faults, "catalog"),
            cache=faulty(MemoryBlockCache(), faults, "cache"),  # your BlockCache
            vsphere=vsphere,
            inventory=vsphere,  # when it also implements VSphereInventory
        )


MyProductHarness.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
TestMyProduct = MyProductHarness.TestCase
