"""liverecovery: VMware Live Recovery as an embeddable asyncio library.

A VM is powered on straight from its backup, served over NFSv3 to the ESX host, and
storage-vMotioned to its destination datastore while it runs.
"""

from liverecovery.backends import (
    Backends,
    BlockCache,
    BlockKey,
    CacheSpace,
    CatalogReader,
    DiskInfo,
    DiskReader,
    ExportInfo,
    Extent,
    ExtentKind,
    MediaKind,
    NfsExporter,
    RestorePoint,
    VmRef,
    VSphereClient,
    VSphereInventory,
)
from liverecovery.config import Passkey, Settings, Timeouts
from liverecovery.errors import (
    ArchivedVmError,
    BackendError,
    BackendTimeoutError,
    CacheError,
    CacheSpaceError,
    CatalogError,
    ConcurrentSessionError,
    JobCancelledError,
    JobInterruptedError,
    JobStateError,
    LiveRecoveryError,
    MultipleVmsError,
    NfsError,
    NfsStatus,
    NfsVolumeLimitError,
    PasskeyError,
    PreflightError,
    RollbackError,
    SettingsError,
    TapeBackupError,
    VSphereError,
)
from liverecovery.job.events import CompensationRan, Event, JobWarning, Progress, StateChanged
from liverecovery.job.job import JobSummary, RecoveryJob
from liverecovery.job.migration import DelayedMigration, ManualMigration, MigrationPolicy
from liverecovery.job.spec import RecoverySpec
from liverecovery.job.staging import DatastoreBuilder, StagedVm, StagingContext
from liverecovery.job.states import State
from liverecovery.nfs.filesystem import Filesystem
from liverecovery.recovery import LiveRecovery

__version__ = "0.1.0"

__all__ = [
    "ArchivedVmError",
    "BackendError",
    "BackendTimeoutError",
    "Backends",
    "BlockCache",
    "BlockKey",
    "CacheError",
    "CacheSpace",
    "CacheSpaceError",
    "CatalogError",
    "CatalogReader",
    "CompensationRan",
    "ConcurrentSessionError",
    "DatastoreBuilder",
    "DelayedMigration",
    "DiskInfo",
    "DiskReader",
    "Event",
    "ExportInfo",
    "Extent",
    "ExtentKind",
    "Filesystem",
    "JobCancelledError",
    "JobInterruptedError",
    "JobStateError",
    "JobSummary",
    "JobWarning",
    "LiveRecovery",
    "LiveRecoveryError",
    "ManualMigration",
    "MediaKind",
    "MigrationPolicy",
    "MultipleVmsError",
    "NfsError",
    "NfsExporter",
    "NfsStatus",
    "NfsVolumeLimitError",
    "Passkey",
    "PasskeyError",
    "PreflightError",
    "Progress",
    "RecoveryJob",
    "RecoverySpec",
    "RestorePoint",
    "RollbackError",
    "Settings",
    "SettingsError",
    "StagedVm",
    "StagingContext",
    "State",
    "StateChanged",
    "TapeBackupError",
    "Timeouts",
    "VSphereClient",
    "VSphereError",
    "VSphereInventory",
    "VmRef",
    "__version__",
]
