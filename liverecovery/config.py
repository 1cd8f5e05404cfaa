"""Settings: attrs frozen classes with the seed's defaults, loadable from a TOML file.

Defaults follow the seed: the cache (3DFS cache, ``s3dfsRootDir``) lives under the job results
folder and keeps 5 % of its filesystem free (``n3dfsCacheMinFree``); each job needs free space of
max(20 GiB, 15 % of the VM's total disk size) on top of that.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from liverecovery.errors import SettingsError

__all__ = [
    "GiB",
    "MiB",
    "Passkey",
    "Settings",
    "Timeouts",
    "default_job_results_dir",
    "load_toml",
    "toml_problem",
]

MiB = 1 << 20
GiB = 1 << 30


DEFAULT_CACHE_MAX_OPEN_FILES: Final = 256
"""256 MiB of hot 1 MiB blocks."""


def default_job_results_dir() -> Path:
    """``$XDG_STATE_HOME/liverecovery`` (``~/.local/state/liverecovery``): the job results folder."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "liverecovery"


def _number(value: object) -> bool:
    """A finite int or float; ``True`` is not a number here (TOML ``true`` is no duration)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str) -> Any:
    def check(_inst: object, _attr: attrs.Attribute[Any], value: float) -> None:
        if not (_number(value) and value > 0):
            raise SettingsError(f"{name} must be a positive number, got {value!r}")

    return check


def _boolean(_inst: object, attr: attrs.Attribute[Any], value: bool) -> None:
    if not isinstance(value, bool):
        raise SettingsError(f"{attr.name} must be true or false, got {value!r}")


def _text(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str):
        raise SettingsError(f"{attr.name} must be a string, got {value!r}")


def _one_of(*choices: str) -> Any:
    def check(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            options = ", ".join(repr(c) for c in choices)
            raise SettingsError(f"{attr.name} must be one of {options}, got {value!r}")

    return check


def _passkey(_inst: object, attr: attrs.Attribute[Any], value: Passkey | None) -> None:
    if value is not None and not isinstance(value, Passkey):
        raise SettingsError(
            f"{attr.name} must be a Passkey (Passkey.from_string(hash)), got {type(value).__name__}"
        )


def _percent(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not (_number(value) and 0 <= value < 100):
        raise SettingsError(f"{attr.name} must be a percentage in [0, 100), got {value!r}")


def _fraction(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not (_number(value) and 0 <= value <= 1):
        raise SettingsError(f"{attr.name} must be a fraction in [0, 1], got {value!r}")


def _non_negative_int(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SettingsError(f"{attr.name} must be a non-negative integer, got {value!r}")


def _positive_int(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SettingsError(f"{attr.name} must be a positive integer, got {value!r}")


def _non_negative_float() -> Any:
    def check(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
        if not (_number(value) and value >= 0):
            raise SettingsError(f"{attr.name} must be a non-negative number, got {value!r}")

    return check


def _port(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise SettingsError(f"{attr.name} must be a TCP port in [0, 65535], got {value!r}")


@attrs.frozen(repr=False)
class Passkey:
    """A restore passkey stored as a salted scrypt hash; the secret itself is never kept.

    ``repr`` and ``str`` show no key material, so a passkey cannot leak into a log line.
    """

    salt: bytes
    digest: bytes
    n: int = 2**14
    r: int = 8
    p: int = 1

    @classmethod
    def from_secret(cls, secret: str) -> Passkey:
        """Hash a new passkey with a random 16-byte salt."""
        if not secret:
            raise SettingsError("passkey must not be empty")
        salt = secrets.token_bytes(16)
        return cls(salt=salt, digest=cls._hash(secret, salt, 2**14, 8, 1))

    @classmethod
    def from_string(cls, encoded: str) -> Passkey:
        """Parse ``scrypt$N$r$p$salt_hex$digest_hex`` (the form ``str(passkey.encode())`` gives)."""
        parts = encoded.split("$")
        try:
            if len(parts) != 6 or parts[0] != "scrypt":
                raise ValueError
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        except ValueError:
            raise SettingsError(
                "passkey hash must look like scrypt$N$r$p$salt_hex$digest_hex"
            ) from None
        if n < 2 or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) or len(salt) < 8:
            raise SettingsError("passkey hash has unsafe or invalid scrypt parameters")
        return cls(salt=salt, digest=digest, n=n, r=r, p=p)

    def encode(self) -> str:
        """The storable form; contains the salt and hash, never the secret."""
        return f"scrypt${self.n}${self.r}${self.p}${self.salt.hex()}${self.digest.hex()}"

    def matches(self, secret: str | None) -> bool:
        """Constant-time comparison of ``secret``'s hash with the stored hash."""
        if not secret:
            return False
        candidate = self._hash(secret, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(candidate, self.digest)

    @staticmethod
    def _hash(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * MiB, dklen=32)

    def __repr__(self) -> str:
        return "Passkey(<scrypt hash>)"

    __str__ = __repr__


@attrs.frozen
class Timeouts:
    """Seconds each backend call may take before the job fails it (every wait has a bound)."""

    preflight: float = attrs.field(default=60.0, validator=_positive("timeouts.preflight"))
    export: float = attrs.field(default=60.0, validator=_positive("timeouts.export"))
    mount: float = attrs.field(default=300.0, validator=_positive("timeouts.mount"))
    stage: float = attrs.field(default=300.0, validator=_positive("timeouts.stage"))
    register: float = attrs.field(default=300.0, validator=_positive("timeouts.register"))
    power_on: float = attrs.field(default=600.0, validator=_positive("timeouts.power_on"))
    serve: float = attrs.field(default=7 * 24 * 3600.0, validator=_positive("timeouts.serve"))
    migrate: float = attrs.field(default=7 * 24 * 3600.0, validator=_positive("timeouts.migrate"))
    cleanup: float = attrs.field(default=300.0, validator=_positive("timeouts.cleanup"))
    compensation: float = attrs.field(default=300.0, validator=_positive("timeouts.compensation"))
    resume: float = attrs.field(default=600.0, validator=_positive("timeouts.resume"))
    """Reconciling a resumed job with vSphere and re-establishing its export, mount and folder."""


_NODE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _node_names(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple):
        raise SettingsError(f"{attr.name} must be a list of node names, got {value!r}")
    seen: set[str] = set()
    for name in value:
        if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
            raise SettingsError(
                f"{attr.name}: {name!r} is not a node name (letters, digits, '.', '_', '-'; "
                "at most 63)"
            )
        if name in seen:
            raise SettingsError(f"{attr.name}: {name!r} is given twice")
        seen.add(name)


def _timeouts_value(_inst: object, attr: attrs.Attribute[Any], value: Timeouts) -> None:
    if not isinstance(value, Timeouts):
        raise SettingsError(f"{attr.name} must be a Timeouts, got {type(value).__name__}")


@attrs.frozen
class Settings:
    """Everything an operator can tune. Validated on construction; errors name the setting."""

    job_results_dir: Path = attrs.field(factory=default_job_results_dir, converter=Path)
    backup_root: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    """Where ``LiveRecovery.from_settings`` reads backups (a ``DirectoryCatalog``) when it is
    given no catalog: a backup root, one VM folder or one .ova; or ``s3://bucket/prefix``
    (an ``ObjectCatalog``)."""
    cache_root: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    cache_min_free_percent: float = attrs.field(default=5.0, validator=_percent)
    job_space_floor_bytes: int = attrs.field(default=20 * GiB, validator=_non_negative_int)
    job_space_fraction: float = attrs.field(default=0.15, validator=_fraction)
    cache_block_size: int = attrs.field(default=1 * MiB, validator=_positive_int)
    cache_max_open_files: int = attrs.field(
        default=DEFAULT_CACHE_MAX_OPEN_FILES, validator=_positive_int
    )
    """Cache block files kept open for fast hits (bounded further by a quarter of the process's
    descriptor limit)."""
    nfs_listen_host: str = attrs.field(default="0.0.0.0", validator=_text)
    nfs_port: int = attrs.field(default=2049, validator=_port)
    portmap_port: int = attrs.field(default=111, validator=_port)
    """The portmapper's own listener; equal to ``nfs_port``, the portmapper shares the NFS
    listener (with both 0: one OS-chosen port, as on loopback)."""
    nfs_grace_s: float = attrs.field(default=90.0, validator=_non_negative_float())
    """After a restart, how long the NFS server asks clients to retry (NFS3ERR_JUKEBOX) for
    exports and folders that resumed jobs have not restored yet, instead of failing them."""
    nfs_max_connections: int = attrs.field(default=256, validator=_positive_int)
    """Connections the NFS server keeps open at once; more are closed at accept (an ESX host
    uses a few per datastore: 256 leaves room for many hosts and stays far below the usual
    1024 descriptors)."""
    nfs_max_connections_per_address: int = attrs.field(default=64, validator=_positive_int)
    """Connections from one source address; one address cannot take them all."""
    nfs_idle_timeout_s: float = attrs.field(default=360.0, validator=_non_negative_float())
    """A connection without a call for this long is closed (clients reconnect on their next
    call, as with knfsd's 6 minutes); 0 keeps idle connections."""
    nfs_partial_record_timeout_s: float = attrs.field(
        default=60.0, validator=_positive("nfs_partial_record_timeout_s")
    )
    """A connection that leaves a record unfinished for this long is closed (slow senders)."""
    nfs_address: str = attrs.field(default="", validator=_text)
    """The address the ESX host mounts from; empty: the command line finds the address of the
    interface that routes to the ESX host."""
    export_root: str = attrs.field(default="/liverecovery", validator=_text)
    restore_passkey: Passkey | None = attrs.field(default=None, validator=_passkey)
    migration_trigger: str = attrs.field(
        default="read-rate", validator=_one_of("read-rate", "delay", "manual")
    )
    serve_before_migrate_s: float = attrs.field(default=0.0, validator=_non_negative_float())
    restore_bandwidth_bps: float = attrs.field(default=0.0, validator=_non_negative_float())
    restore_depth: int = attrs.field(default=4, validator=_positive_int)
    """Blocks the background restore reads at once (each started only while the VM's reads
    are quiet): an object store serves a few concurrent ranged GETs much faster than one."""
    progress_interval_s: float = attrs.field(
        default=1.0, validator=_positive("progress_interval_s")
    )
    keep_overlay: bool = attrs.field(default=False, validator=_boolean)
    journal: bool = attrs.field(default=True, validator=_boolean)
    compensation_attempts: int = attrs.field(default=3, validator=_positive_int)
    compensation_retry_delay_s: float = attrs.field(default=1.0, validator=_non_negative_float())
    migration_retries: int = attrs.field(default=5, validator=_non_negative_int)
    """How many times a failed storage vMotion is retried by itself (the VM keeps running from the
    backup meanwhile); after that the job keeps serving until an operator's ``migrate-now``."""
    migration_backoff_s: float = attrs.field(default=60.0, validator=_non_negative_float())
    """The wait before the first retry of a failed storage vMotion; it doubles with each retry."""
    max_migrations: int = attrs.field(default=2, validator=_positive_int)
    """Storage vMotions this process serves at once (the others wait, their VMs still served):
    each keeps many 1 MiB READs in flight, and more at once only starve the reads of the VMs
    running from the backup (benchmarks/plan.py: read p99 137 ms with 1, 406 ms with 2,
    1.26 s with 4, for the same total copy time)."""
    max_migrations_per_host: int = attrs.field(default=1, validator=_positive_int)
    """Storage vMotions at once per destination ESX host."""
    migration_stall_s: float = attrs.field(default=1800.0, validator=_non_negative_float())
    """A storage vMotion whose progress has not moved for this long gives its slot to the next
    VM waiting (it goes on, bounded by ``timeouts.migrate``): a hung one must not hold the
    plan's migrations for days. 0: never."""
    timeouts: Timeouts = attrs.field(factory=Timeouts, validator=_timeouts_value)
    s3_verify_tls: bool = attrs.field(default=True, validator=_boolean)
    """Backups in an S3 store (``s3://bucket/prefix``): verify the endpoint's TLS certificate
    (false only for a store with a self-signed certificate you trust)."""
    s3_request_timeout_s: float = attrs.field(
        default=30.0, validator=_positive("s3_request_timeout_s")
    )
    """One request to the S3 store (a ranged GET of a block) may take this long."""
    s3_retries: int = attrs.field(default=3, validator=_non_negative_int)
    """A failed request to the S3 store is retried this many times, with back-off ..."""
    s3_retry_timeout_s: float = attrs.field(default=10.0, validator=_positive("s3_retry_timeout_s"))
    """... for at most this long; then the read is answered "retry later" (NFS3ERR_JUKEBOX) and
    the ESX host asks again, so a VM waits out a store outage instead of seeing an I/O error."""
    shared_state: str = attrs.field(default="", validator=_text)
    """Several serving nodes: where they share the NFS handle key, the leases of the service
    addresses and the export registries (``s3://bucket/state-prefix``, never inside a backup
    prefix, or a directory every node sees); empty for one node alone (docs/scale-out.md)."""
    node_name: str = attrs.field(default="", validator=_text)
    """Several serving nodes: this node's name (it holds its service address's lease under it,
    ``liverecovery standby``), and with ``nodes`` one of them."""
    nodes: tuple[str, ...] = attrs.field(default=(), converter=_tuple, validator=_node_names)
    """Every node running the plan (the same list on each); each runs the VMs whose ESX host
    ranks it first (rendezvous hashing) and they start boot groups together through
    ``shared_state``. Empty: this node runs the whole plan alone."""
    lease_s: float = attrs.field(default=10.0, validator=_positive("lease_s"))
    """A service address's lease: its owner renews it every ``lease_s/5`` and fences itself
    (stops serving) after ``lease_s/2`` without a renewal; another node takes it over once it
    has not changed for ``lease_s`` on that node's own clock."""

    def __attrs_post_init__(self) -> None:
        if self.nodes and not self.node_name:
            raise SettingsError("nodes is set: node_name must name this node, one of them")
        if self.nodes and self.node_name not in self.nodes:
            known = ", ".join(self.nodes) or "none"
            raise SettingsError(f"node_name {self.node_name!r} is not one of nodes ({known})")
        if self.nodes and not self.shared_state:
            raise SettingsError(
                "nodes is set but shared_state is empty: several nodes start boot groups "
                "together through it"
            )

    @property
    def effective_cache_root(self) -> Path:
        """``cache_root``, or the default ``<job_results_dir>/3dfs-cache``."""
        return self.cache_root or self.job_results_dir / "3dfs-cache"

    def job_space_bytes(self, vm_total_disk_bytes: int) -> int:
        """Free cache space one job needs: max(floor, fraction x the VM's total disk size)."""
        return max(
            self.job_space_floor_bytes, math.ceil(self.job_space_fraction * vm_total_disk_bytes)
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "settings") -> Settings:
        """Build settings from a parsed ``[settings]`` table.

        :raises SettingsError: an unknown key or a bad value, naming ``source`` and the key.
        """
        fields = {a.name: a for a in attrs.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                raise SettingsError(f"{source}: unknown setting {key!r}")
            if key == "timeouts":
                kwargs[key] = _timeouts(value, source)
            elif key == "restore_passkey":
                if not isinstance(value, str):
                    raise SettingsError(f"{source}: restore_passkey must be a string hash")
                try:
                    kwargs[key] = Passkey.from_string(value)
                except SettingsError as exc:
                    raise SettingsError(f"{source}: restore_passkey: {exc}") from None
            elif key in _PATH_KEYS and not isinstance(value, str):
                raise SettingsError(f"{source}: {key} must be a path string, got {value!r}")
            else:
                kwargs[key] = value
        try:
            return cls(**kwargs)
        except SettingsError as exc:
            raise SettingsError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], *, table: str | None = "settings") -> Settings:
        """Read the ``[settings]`` table of a TOML file (a job file's, or a file of its own).

        A file with no ``[settings]`` table gives the defaults; settings written at the top
        level instead are refused, naming the table they belong in. ``table=None`` reads the
        top level.

        :raises SettingsError: unreadable file, TOML syntax error or duplicate key, unknown key
            or bad value, each naming the file (and the key).
        """
        data: Mapping[str, Any] = load_toml(path, what="settings")
        if table is not None:
            sub = data.get(table, {})
            if not isinstance(sub, Mapping):
                raise SettingsError(f"{path}: [{table}] must be a table")
            stray = sorted(k for k in data if k in _SETTING_NAMES)
            if stray:
                raise SettingsError(
                    f"{path}: {stray[0]!r} is a setting: put it under a [{table}] table"
                )
            data = sub
        return cls.from_mapping(data, source=str(path))


_PATH_KEYS: Final = frozenset({"job_results_dir", "backup_root", "cache_root"})
_SETTING_NAMES: Final = frozenset(a.name for a in attrs.fields(Settings))


def _timeouts(value: object, source: str) -> Timeouts:
    if not isinstance(value, Mapping):
        raise SettingsError(f"{source}: timeouts must be a table")
    known = {a.name for a in attrs.fields(Timeouts)}
    for key in value:
        if key not in known:
            raise SettingsError(f"{source}: unknown setting 'timeouts.{key}'")
    try:
        return Timeouts(**value)
    except SettingsError as exc:
        raise SettingsError(f"{source}: {exc}") from None


def load_toml(path: str | os.PathLike[str], *, what: str = "file") -> dict[str, Any]:
    """Parse a TOML file.

    :raises SettingsError: unreadable, not UTF-8, or a syntax error: naming the file and the
        line (and the key, for a key or table given twice).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {toml_problem(text, str(exc))}") from None


_AT = re.compile(r"\s*\(at (?:line (?P<line>\d+), column \d+|end of document)\)$")
_KEY = re.compile(r"^\s*(?P<key>[^=#\[]+?)\s*=")
_TABLE = re.compile(r"^\s*\[+\s*(?P<table>[^\]]+?)\s*\]")


def toml_problem(text: str, message: str) -> str:
    """tomllib's ``message`` made to name the line, and the key a duplicate repeats."""
    at = _AT.search(message)
    lines = text.splitlines()
    if at is None:
        return f"invalid TOML: {message}"
    problem = message[: at.start()]
    if at["line"]:
        number = int(at["line"])
    else:  # "at end of document": the last line that holds something
        number = max((i + 1 for i, line in enumerate(lines) if line.strip()), default=1)
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    if problem.startswith("Cannot overwrite a value"):
        key = _KEY.match(line)
        if key:
            tables = [m["table"] for m in map(_TABLE.match, lines[: number - 1]) if m]
            name = key["key"].strip()
            full = f"{tables[-1]}.{name}" if tables else name
            return f"line {number}: key {full!r} is given twice (or conflicts with a table)"
    if problem.startswith("Cannot declare"):
        table = _TABLE.match(line)
        if table:
            return f"line {number}: table [{table['table']}] is declared twice"
    return f"line {number}: invalid TOML: {problem}"
