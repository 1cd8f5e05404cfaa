"""How long the simulated vSphere takes for each task: zero unless asked.

The simulated hosts answer at once, so in the embedded environment one VM's power-on is nothing
but our own CPU, and a plan of many VMs is CPU-bound. A real vCenter/ESXi takes seconds per task
(registering a .vmx, powering on, mounting an NFS datastore), and that waiting, not our CPU, is
what one VM's power-on mostly is. ``TaskLatency`` lets a benchmark model it: the simulated
vCenter (``sim.hosts.HostRouter``) sleeps that long before each task, costing no CPU.

The shape is govmomi vcsim's ``DelayConfig`` (github.com/vmware/govmomi, simulator/model.go:
a delay per method and a jitter given as a coefficient of variation, stddev/mean); vcsim's own
delays default to zero and it ships no figures, and neither do we: the defaults are zero so every
test runs as before, and the figures a benchmark uses are its own, documented there.
"""

from __future__ import annotations

import random

import attrs

from liverecovery.errors import SettingsError

__all__ = ["TaskLatency", "parse_latency"]

_KEYS = {"mount": "mount_s", "register": "register_s", "power_on": "power_on_s", "jitter": "jitter"}


@attrs.frozen
class TaskLatency:
    """Seconds each simulated vSphere task waits before it runs, and their jitter."""

    mount_s: float = 0.0
    register_s: float = 0.0
    power_on_s: float = 0.0
    jitter: float = 0.0  # coefficient of variation (stddev / mean), as vcsim's DelayJitter

    @property
    def zero(self) -> bool:
        """Whether no task waits (the default: nothing is slowed down)."""
        return not (self.mount_s or self.register_s or self.power_on_s)

    def delay(self, task: str, rng: random.Random) -> float:
        """The wait for one ``task`` (``mount``, ``register``, ``power_on``), never negative."""
        mean = float(getattr(self, _KEYS[task]))
        if mean <= 0.0 or self.jitter <= 0.0:
            return max(0.0, mean)
        return max(0.0, rng.gauss(mean, self.jitter * mean))


def parse_latency(text: str) -> TaskLatency:
    """``"register=0.3,power_on=1.0,mount=0.3,jitter=0.2"`` (any subset) as a ``TaskLatency``.

    :raises SettingsError: an unknown key, a value that is not a number, or a negative one.
    """
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _KEYS:
            raise SettingsError(
                f"vSphere latency {item!r}: expected key=seconds, key one of "
                + ", ".join(sorted(_KEYS))
            )
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(
                f"vSphere latency {key}: {value.strip()!r} is not a number"
            ) from None
        if not number >= 0.0 or number == float("inf"):
            raise SettingsError(f"vSphere latency {key}: {number} is not a finite number >= 0")
        values[_KEYS[key]] = number
    return TaskLatency(**values)
