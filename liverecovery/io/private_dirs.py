"""Owner-only directories: every directory we create is 0700, whatever the umask.

``Path.mkdir(mode=0o700, parents=True)`` applies the mode to the last directory only; the missing
parents it creates get ``0o777 & ~umask`` (world-writable under umask 0). The cache, the write
overlays, the job folders, the journal and the NFS server's state (its handle key) hold a VM's
data or secrets, so every directory on the way that we create is made owner-only. Directories
that already exist are left as they are: they are the operator's.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["make_private_dirs", "write_private_file"]


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents with mode 0700; return it as a ``Path``.

    :raises OSError: a directory cannot be created, or ``path`` exists and is not a directory.
    """
    target = Path(path)
    missing: list[Path] = []
    for d in (target, *target.parents):
        if d.is_dir():
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made meanwhile by someone else: theirs
        os.chmod(d, 0o700)  # a umask that removes owner bits must not win either
    return target


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path``, owner-only, durably and whole: to a temporary name in the same
    folder, fsynced, then renamed over ``path``, so a reader (or a crash) sees the old file or
    the new one, never a part.

    :raises OSError: the folder cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
