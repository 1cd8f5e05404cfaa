"""The filesystem interface the NFS server serves.

Modelled on nfsserve's ``NFSFileSystem`` trait: small, async, keyed by file id. The server turns
file ids into authenticated handles and NFS procedures into these calls; a filesystem never sees
handles, credentials or XDR. Failures are ``NfsError(status)``. Names are ``str`` (UTF-8, with
``surrogateescape`` for bytes that are not UTF-8); the server refuses names that contain ``/`` or
NUL, are ``.``/``..`` where not allowed, or exceed 255 bytes before they reach a filesystem.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from typing import TypeAlias

import attrs
from anyio.abc import AsyncResource

from liverecovery.io.ranges import FileRange

__all__ = [
    "CreateMode",
    "DirEntry",
    "DirPage",
    "FileAttributes",
    "FileType",
    "Filesystem",
    "FsStat",
    "SERVER_TIME",
    "SetAttributes",
    "Stability",
    "WriteData",
]

WriteData: TypeAlias = bytes | bytearray | memoryview
"""The bytes of a WRITE: often a view into the received RPC record (no copy). Valid only during
the ``write`` call: an implementation that keeps the bytes copies them."""


class FileType(enum.IntEnum):
    """ftype3."""

    REG = 1
    DIR = 2
    BLK = 3
    CHR = 4
    LNK = 5
    SOCK = 6
    FIFO = 7


class Stability(enum.IntEnum):
    """stable_how: how durable a WRITE must be before the reply."""

    UNSTABLE = 0
    DATA_SYNC = 1
    FILE_SYNC = 2


class CreateMode(enum.IntEnum):
    """createmode3."""

    UNCHECKED = 0
    GUARDED = 1
    EXCLUSIVE = 2


class _ServerTime(enum.Enum):
    SERVER_TIME = "SERVER_TIME"


SERVER_TIME = _ServerTime.SERVER_TIME
"""In ``SetAttributes``: set the time to the server's current time (SET_TO_SERVER_TIME)."""


@attrs.frozen
class FileAttributes:
    """fattr3 without fsid/rdev, which the server fills in. Times are nanoseconds since the epoch."""

    type: FileType
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    fileid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@attrs.frozen
class SetAttributes:
    """sattr3: ``None`` leaves an attribute unchanged."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | _ServerTime | None = None
    mtime_ns: int | _ServerTime | None = None


@attrs.frozen
class DirEntry:
    """One directory entry; ``cookie`` is unique and stable within its directory, never 0."""

    name: str
    fileid: int
    cookie: int


@attrs.frozen
class DirPage:
    """A slice of a directory after a cookie; ``verifier`` changes when cookies become invalid."""

    entries: Sequence[DirEntry]
    eof: bool
    verifier: int = 0


@attrs.frozen
class FsStat:
    """FSSTAT figures of the filesystem behind an export."""

    total_bytes: int
    free_bytes: int
    avail_bytes: int
    total_files: int
    free_files: int
    avail_files: int


class Filesystem(AsyncResource):
    """**Base class:** a tree of files keyed by stable 64-bit file ids.

    Every implementation subclasses it (like a Rust trait, nfsserve's ``vfs.rs``): the abstract
    methods are the contract, and optional capabilities are methods with a default
    (``read_file_range``), so the server calls them without probing what a filesystem can do.
    ``async with`` a filesystem closes it (``aclose``) on the way out.

    File ids must stay the same for the life of the data (across server restarts), because the
    server derives file handles from them and ESXi keeps using old handles.
    """

    __slots__ = ()

    @property
    @abc.abstractmethod
    def root_id(self) -> int:
        """The file id of the export's root directory."""
        ...

    @property
    @abc.abstractmethod
    def read_only(self) -> bool:
        """True when every mutating call raises ``NfsError(ROFS)``."""
        ...

    @abc.abstractmethod
    async def getattr(self, fileid: int) -> FileAttributes:
        """:raises NfsError: STALE when the file no longer exists."""
        ...

    @abc.abstractmethod
    async def setattr(self, fileid: int, attributes: SetAttributes) -> FileAttributes:
        """Apply ``attributes`` (a size truncates or extends) and return the new attributes."""
        ...

    @abc.abstractmethod
    async def lookup(self, dir_id: int, name: str) -> int:
        """:raises NfsError: NOENT, NOTDIR."""
        ...

    @abc.abstractmethod
    async def read(self, fileid: int, offset: int, length: int) -> tuple[bytes, bool]:
        """Return up to ``length`` bytes and whether the read reached end of file.

        Returns exactly ``length`` bytes unless the end of file is reached.
        """
        ...

    async def read_file_range(self, fileid: int, offset: int, length: int) -> FileRange | None:
        """**Optional:** the file range holding ``length`` bytes at ``offset`` (fewer at end of
        file), for the server to splice to the socket; None when those bytes are not one range
        of one regular file. The default says None always: the server reads through ``read``.
        Raises what ``read`` would raise for a bad ``fileid``."""
        return None

    @abc.abstractmethod
    async def write(
        self, fileid: int, offset: int, data: WriteData, stability: Stability
    ) -> Stability:
        """Write ``data``; durable before returning unless ``stability`` is UNSTABLE.

        ``data`` may be a view into the request's buffer: copy it if it must outlive the call.

        Returns the stability actually achieved (at least the one asked for).
        """
        ...

    @abc.abstractmethod
    async def commit(self, fileid: int) -> None:
        """Make every UNSTABLE write to ``fileid`` durable."""
        ...

    @abc.abstractmethod
    async def create(
        self,
        dir_id: int,
        name: str,
        attributes: SetAttributes,
        mode: CreateMode = CreateMode.UNCHECKED,
        verifier: bytes = b"",
    ) -> int:
        """Create a regular file and return its id.

        GUARDED fails with EXIST if the name exists; EXCLUSIVE stores ``verifier`` so a retried
        create with the same verifier succeeds and returns the same file.
        """
        ...

    @abc.abstractmethod
    async def mkdir(self, dir_id: int, name: str, attributes: SetAttributes) -> int:
        """:raises NfsError: EXIST."""
        ...

    @abc.abstractmethod
    async def symlink(self, dir_id: int, name: str, target: str, attributes: SetAttributes) -> int:
        """:raises NfsError: NOTSUPP when the filesystem has no symlinks."""
        ...

    @abc.abstractmethod
    async def readlink(self, fileid: int) -> str:
        """:raises NfsError: INVAL when ``fileid`` is not a symlink."""
        ...

    @abc.abstractmethod
    async def link(self, fileid: int, dir_id: int, name: str) -> None:
        """:raises NfsError: NOTSUPP when the filesystem has no hard links."""
        ...

    @abc.abstractmethod
    async def remove(self, dir_id: int, name: str) -> None:
        """Remove a non-directory. :raises NfsError: NOENT, ISDIR."""
        ...

    @abc.abstractmethod
    async def rmdir(self, dir_id: int, name: str) -> None:
        """:raises NfsError: NOENT, NOTDIR, NOTEMPTY."""
        ...

    @abc.abstractmethod
    async def rename(self, from_dir: int, from_name: str, to_dir: int, to_name: str) -> None:
        """Atomically rename, replacing a compatible target."""
        ...

    @abc.abstractmethod
    async def readdir(self, dir_id: int, cookie: int, max_entries: int) -> DirPage:
        """Entries after ``cookie`` (0 = from the start), at most ``max_entries``."""
        ...

    @abc.abstractmethod
    async def fsstat(self) -> FsStat:
        """Real capacity figures for FSSTAT."""
        ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release open files; the filesystem is not used afterwards."""
        ...
