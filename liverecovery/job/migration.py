"""When a served VM starts its storage vMotion: the migration trigger policies.

The seed's step 7 migrates "after the initial reads needed to make the VM usable". A policy waits
for that moment; ``job.migrate_now()`` always overrides it. The read-rate policy of the File
Recovery Enabler plugs in here too.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import anyio
import attrs

__all__ = ["DelayedMigration", "ManualMigration", "MigrationPolicy"]


@runtime_checkable
class MigrationPolicy(Protocol):
    """**Protocol:** returns when the job should start migrating."""

    async def wait_until_ready(self) -> None: ...


@attrs.frozen
class DelayedMigration:
    """Migrate a fixed time after power-on (0: at once)."""

    seconds: float = 0.0

    async def wait_until_ready(self) -> None:
        await anyio.sleep(self.seconds)


@attrs.frozen
class ManualMigration:
    """Never migrate on its own: wait for ``job.migrate_now()`` (bounded by ``timeouts.serve``)."""

    async def wait_until_ready(self) -> None:
        await anyio.sleep_forever()
