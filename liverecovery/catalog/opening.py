"""The one way to open the backups a path or URL names: a folder (``DirectoryCatalog``) or
``s3://bucket/prefix`` (``ObjectCatalog``). The CLI, the assembly, plans and verify all call
``open_catalog``, so each reads every kind of backup the same way."""

from __future__ import annotations

import os

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.catalog.objects import StoreOptions, is_s3_url
from liverecovery.config import Settings

__all__ = ["open_catalog"]


def open_catalog(
    location: str | os.PathLike[str],
    settings: Settings | None = None,
    *,
    grain_cache_bytes: int = 64 << 20,
) -> DirectoryCatalog | ObjectCatalog:
    """The catalog of ``location`` (nothing is read yet; use it with ``async with``).

    :raises CatalogError: an ``s3:`` URL that is malformed.
    """
    if is_s3_url(location):
        options = StoreOptions.from_settings(settings) if settings is not None else None
        return ObjectCatalog(
            os.fspath(location), options=options, grain_cache_bytes=grain_cache_bytes
        )
    return DirectoryCatalog(location, grain_cache_bytes=grain_cache_bytes)
