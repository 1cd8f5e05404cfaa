"""Random interleavings of start / fail-a-backend-call / cancel / migrate_now over several jobs,
through the harness embedders use (``liverecovery.testing.harness``)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis.stateful import invariant, precondition

from liverecovery.testing.harness import LiveRecoveryHarness
from liverecovery.testing.memory import MemoryExporter, MemoryVSphere


class InMemoryHarness(LiveRecoveryHarness):
    """The harness on the in-memory backends, with their extra bookkeeping checked too."""

    @precondition(lambda self: bool(self.started))
    @invariant()
    def published_folders_and_mounts_stay_live(self) -> None:
        exporter, vsphere = self.backends.exporter, self.backends.vsphere
        assert isinstance(exporter, MemoryExporter) and isinstance(vsphere, MemoryVSphere)
        for job in self.started:
            pending = job.pending_compensations
            if "unpublish" in pending:
                assert (job.export_path, job.folder) in exporter.published, job.id
            if "unmount" in pending:
                assert job.datastore in vsphere.datastores[job.spec.esx_host], job.id


InMemoryHarness.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestJobInterleavings = InMemoryHarness.TestCase
