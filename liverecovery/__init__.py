"""liverecovery: VMware Live Recovery as an embeddable asyncio library.

A VM is powered on straight from its backup, served over NFSv3 to the ESX host, and
storage-vMotioned to its destination datastore while it runs.

The top level holds what an embedder uses every day: ``LiveRecovery`` and its job, the spec and
settings, the events a job emits, the roots of the error tree, and recovery plans: a ``Plan``
built in Python from ``BootGroup`` and ``PlanVm`` (or read by ``load_plan``), its handle
``PlanRun`` and ``show_plan``, its table updating on a terminal or in a notebook. The four backend contracts
are in ``liverecovery.backends``; every error in ``liverecovery.errors``; implementations in
their layers (``nfs``, ``catalog``, ``cache``, ``datastore``, ``vsphere``); test doubles in
``liverecovery.testing`` and the simulated ESX host in ``liverecovery.sim``. Importing this
package imports neither pyVmomi nor a simulator.
"""

from liverecovery.backends import Backends
from liverecovery.config import Passkey, Settings, Timeouts
from liverecovery.errors import (
    BackendError,
    CatalogError,
    JobStateError,
    LiveRecoveryError,
    PlanError,
    PreflightError,
    SettingsError,
)
from liverecovery.job.events import CompensationRan, Event, JobWarning, Progress, StateChanged
from liverecovery.job.job import JobSummary, RecoveryJob
from liverecovery.job.states import State
from liverecovery.plan.model import BootGroup, FailurePolicy, GroupWait, Placement, Plan, PlanVm
from liverecovery.plan.parse import load_plan
from liverecovery.plan.runner import PlanRun
from liverecovery.recovery.live import LiveRecovery
from liverecovery.recovery.plan_progress import show_plan
from liverecovery.spec import RecoverySpec

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Backends",
    "BootGroup",
    "CatalogError",
    "CompensationRan",
    "Event",
    "FailurePolicy",
    "GroupWait",
    "JobStateError",
    "JobSummary",
    "JobWarning",
    "LiveRecovery",
    "LiveRecoveryError",
    "Passkey",
    "Placement",
    "Plan",
    "PlanError",
    "PlanRun",
    "PlanVm",
    "PreflightError",
    "Progress",
    "RecoveryJob",
    "RecoverySpec",
    "Settings",
    "SettingsError",
    "State",
    "StateChanged",
    "Timeouts",
    "__version__",
    "load_plan",
    "show_plan",
]
