"""Public surfaces (issue 12, item 10): unauthenticated health answers say only the status.

Details (version, counts, the store's address, latency and errors) are served
on /health/details to operator tokens (admin or metrics role), on both stores.
"""

from __future__ import annotations

import orjson
import pytest
import trio

from syncbridge.client import open_client

from ..conftest import mint
from ..test_admin_e2e import http_get
from . import open_servers
from .conftest import StoreUnderTest

BOUND = 15  # seconds


def operator(role: str) -> str:
    return mint(user="ops", device="cli", session="ops", roles=(role,))


async def test_public_health_is_status_only(store: StoreUnderTest) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(store.settings()) as (server,),
            open_client(server.url, token=mint(device="a")),
        ):
            for token in (None, mint(device="a"), operator("service"), "not-a-token"):
                assert await http_get(server.http, "/health", token) == (200, b'{"status":"ok"}')
            status, body = await http_get(server.http, "/health/ready")
            assert (status, orjson.loads(body)) == (200, {"status": "ready", "draining": False})
            if store.redis is not None:
                address = f"{store.redis.host}:{store.redis.port}".encode()
                for path in ("/health", "/health/ready", "/health/live"):
                    assert address not in (await http_get(server.http, path))[1]


@pytest.mark.parametrize("role", ["admin", "metrics"])
async def test_health_details_need_an_operator_token(store: StoreUnderTest, role: str) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(store.settings()) as (server,),
            open_client(server.url, token=mint(device="a")),
        ):
            status, body = await http_get(server.http, "/health/details", operator(role))
            assert status == 200
            details = orjson.loads(body)
            assert details["status"] == "ok"
            assert (details["active_connections"], details["sessions"]) == (1, 1)
            assert details["store"]["backend"] == store.kind
            if store.redis is not None:
                assert f":{store.redis.port}" in details["store"]["address"]
            assert (await http_get(server.http, "/health/details"))[0] == 401
            assert (await http_get(server.http, "/health/details", mint(device="a")))[0] == 403
            assert (await http_get(server.http, "/health/details", "x.y.z"))[0] == 401
            metrics = (await http_get(server.http, "/metrics", operator("admin")))[1].decode()
            assert 'syncbridge_refusals_total{reason="http_no_token"} 1.0' in metrics
            assert 'syncbridge_refusals_total{reason="http_role"} 1.0' in metrics
            assert 'syncbridge_auth_failures_total{reason="malformed"} 1.0' in metrics
