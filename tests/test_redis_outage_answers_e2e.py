"""What clients and operators see when Redis refuses or is gone (Redis backend)."""

from __future__ import annotations

import pytest
import trio

from syncbridge.client import AuthFailed, open_client

from .conftest import make_settings, mint, start_server
from .redis_harness import RedisServer
from .test_admin_e2e import http_get

BOUND = 20


async def test_auth_while_redis_is_down_gets_auth_failure_503(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    server = await start_server(
        nursery, make_settings(redis_url=redis_server.url, store_timeout=0.5)
    )
    with trio.fail_after(BOUND):
        await redis_server.stop()
        async with open_client(server.url) as client:
            with pytest.raises(AuthFailed) as refused:
                await client.authenticate(server.token())
            assert refused.value.code == 503
            assert refused.value.error_code == "STORE_UNAVAILABLE"
            assert (await client.heartbeat("still open"))["client_time"] == "still open"
        await redis_server.start()
        async with open_client(server.url, token=server.token()) as client:
            assert (await client.snapshot())["version"] == 0
    server.stop.set()


async def test_health_is_degraded_when_redis_refuses_writes(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    server = await start_server(nursery, make_settings(redis_url=redis_server.url))
    with trio.fail_after(BOUND):
        status, _ = await http_get(server.http, "/health")
        assert status == 200
        # Redis still answers PING when full; the health probe writes.
        await redis_server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        await redis_server.cli("CONFIG", "SET", "maxmemory", "1")
        assert await http_get(server.http, "/health") == (503, b'{"status":"degraded"}')
        ops = mint(user="ops", device="cli", session="ops", roles=("metrics",))
        status, body = await http_get(server.http, "/health/details", ops)
        assert status == 503
        assert b'"degraded"' in body
        assert b"OOM" in body
        await redis_server.cli("CONFIG", "SET", "maxmemory", "0")
        status, _ = await http_get(server.http, "/health")
        assert status == 200
    server.stop.set()
