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
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.config import Passkey, Settings, Timeouts
from liverecovery.datastore.builder import FreBuilder
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.embedded import embedded_environment
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
    NfsClientError,
    NfsError,
    NfsStatus,
    NfsVolumeLimitError,
    OverlayError,
    PasskeyError,
    PreflightError,
    RollbackError,
    SettingsError,
    TapeBackupError,
    VSphereError,
)
from liverecovery.job.events import CompensationRan, Event, JobWarning, Progress, StateChanged
from liverecovery.job.job import JobSummary, RecoveryJob
from liverecovery.job.migration import (
    DelayedMigration,
    ManualMigration,
    MigrationPolicy,
    ReadRateMigration,
)
from liverecovery.job.sessions import SessionKind, SessionRegistry
from liverecovery.job.spec import RecoverySpec
from liverecovery.job.staging import DatastoreBuilder, StagedVm, StagingContext
from liverecovery.job.states import State
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import FileRange, FileRangeReader, Filesystem
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from liverecovery.recovery import LiveRecovery
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient
from liverecovery.vsphere.simulated import SimulatedEsxHost

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
    "DirectoryCatalog",
    "DiskBlockCache",
    "DiskInfo",
    "DiskReader",
    "Event",
    "ExportInfo",
    "Extent",
    "ExtentKind",
    "FileRange",
    "FileRangeReader",
    "Filesystem",
    "FreBuilder",
    "JobCancelledError",
    "JobInterruptedError",
    "JobStateError",
    "JobSummary",
    "JobWarning",
    "LiveRecovery",
    "LiveRecoveryError",
    "LocalFilesystem",
    "ManualMigration",
    "MediaKind",
    "MigrationPolicy",
    "MultipleVmsError",
    "NfsClient",
    "NfsClientError",
    "NfsError",
    "NfsExporter",
    "NfsServer",
    "NfsStatus",
    "NfsVolumeLimitError",
    "OverlayError",
    "Passkey",
    "PasskeyError",
    "PreflightError",
    "Progress",
    "PyvmomiVSphereClient",
    "ReadRateMigration",
    "RecoveryJob",
    "RecoverySpec",
    "RestorePoint",
    "RollbackError",
    "SessionKind",
    "SessionRegistry",
    "Settings",
    "SettingsError",
    "SimulatedEsxHost",
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
    "WriteOverlay",
    "__version__",
    "embedded_environment",
]
