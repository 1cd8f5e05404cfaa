"""``recover`` without ``--nfs-address``: the address of the interface routing to the ESX host."""

from __future__ import annotations

import pytest

from liverecovery.cli.route import route_address
from liverecovery.errors import SettingsError


def test_loopback_routes_from_loopback() -> None:
    assert route_address("127.0.0.1") == "127.0.0.1"
    assert route_address("localhost") in ("127.0.0.1", "::1")


def test_a_name_that_cannot_resolve_says_to_pass_the_flag() -> None:
    with pytest.raises(SettingsError, match="pass --nfs-address") as caught:
        route_address("esx01..example")  # an empty label: refused before any DNS query
    assert "esx01..example" in str(caught.value)
