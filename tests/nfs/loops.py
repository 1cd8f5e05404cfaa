"""The event loops the NFS tests run the server on: asyncio's own, and uvloop (the `speed`
extra, which the `test` extra installs too, so CI covers both)."""

from __future__ import annotations

import importlib.util

import pytest

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
"""False without the `speed` extra: then only the plain asyncio path is tested."""

LOOPS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="uvloop",
        marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed"),
    ),
]
"""The event loops the server is tested on: asyncio's own, and uvloop (the `speed` extra)."""
