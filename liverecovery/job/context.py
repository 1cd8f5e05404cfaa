"""What a job shares with the other jobs of one ``LiveRecovery``; its own module so that the
effects table and reconciliation can name it without importing the job."""

from __future__ import annotations

from pathlib import Path

import anyio
import attrs

from liverecovery.backends import Backends, DatastoreBuilder
from liverecovery.config import Settings
from liverecovery.job.journal import JournalListener
from liverecovery.job.migration import MigrationPolicy
from liverecovery.job.sessions import SessionRegistry
from liverecovery.job.sharing import HostShares
from liverecovery.job.throttle import MigrationSlots

__all__ = ["JobContext"]


@attrs.frozen
class JobContext:
    """What a job shares with the other jobs of one ``LiveRecovery``."""

    settings: Settings
    backends: Backends
    shares: HostShares
    sessions: SessionRegistry
    builder: DatastoreBuilder
    migration_policy: MigrationPolicy
    space_lock: anyio.Lock
    journal_dir: Path | None = None
    migration_slots: MigrationSlots | None = None
    """Bounds concurrent storage vMotions (None: no bound)."""
    journal_listener: JournalListener | None = None
    """Given each journal record before the job goes on (several serving nodes: the shared
    state has the record before the side effect it announces happens)."""
