"""Shared test configuration: anyio on asyncio, hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "slow", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=2000
)
settings.load_profile("slow" if os.environ.get("LIVERECOVERY_SLOW") else "ci")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
