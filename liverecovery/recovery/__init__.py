"""The top of the library: ``LiveRecovery`` runs jobs; the control socket and progress display
follow them. Everything a working recovery needs is assembled here from ``Settings``."""

from liverecovery.recovery.live import LiveRecovery

__all__ = ["LiveRecovery"]
