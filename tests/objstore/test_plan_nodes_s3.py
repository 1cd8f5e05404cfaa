"""Two serving nodes running one plan meet in the S3 store (Ceph RGW): the same boot order
across nodes as through a shared directory (tests/plan/test_plan_nodes.py), over conditional
PUTs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from liverecovery.catalog.objects import S3Location, StoreOptions
from liverecovery.catalog.shared_state import ObjectSharedState
from liverecovery.testing.objstore import RadosGateway
from tests.plan.test_plan_nodes import NODES, check_boot_order_across_nodes

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]


async def test_two_nodes_meet_in_the_store(
    rgw: RadosGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in rgw.env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    url = rgw.url(f"plan-nodes-{uuid.uuid4().hex[:8]}/state")
    await check_boot_order_across_nodes(tmp_path, url)
    state = ObjectSharedState(S3Location.parse(url), StoreOptions())
    keys = await state.keys("plans")
    # the placement, each node's start, and each node's record of each group
    assert sum(k.endswith("/placement") for k in keys) == 1
    for node in NODES:
        assert sum(k.endswith(f"/started/{node}") for k in keys) == 1
        assert sum(k.endswith(f"/{node}") and "-db/" in k for k in keys) == 1
        assert sum(k.endswith(f"/{node}") and "-app/" in k for k in keys) == 1
