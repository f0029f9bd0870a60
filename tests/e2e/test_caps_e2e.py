"""Caps over real sockets: connections per process, sockets per device, handshakes per address."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from syncbridge.client import AuthFailed, open_client

from ..conftest import RunningServer

BOUND = 10


async def test_connection_cap_refuses_handshake_503_with_body(server_factory: Any) -> None:
    server: RunningServer = await server_factory(max_connections=3)
    with trio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            for device in "abc":
                await stack.enter_async_context(
                    open_client(server.url, token=server.token(device=device))
                )
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(server.url):
                    pass
            assert refused.value.status_code == 503
            assert refused.value.body is not None
            assert orjson.loads(refused.value.body) == {
                "error": "server at its connection limit; reconnect shortly"
            }
        await server.app.wait_no_connections()
        # Room again once the others closed.
        async with open_client(server.url, token=server.token(device="d")) as client:
            await client.snapshot()
    metrics = server.app.metrics.render().decode()
    assert 'syncbridge_refusals_total{reason="handshake_connection_cap"} 1.0' in metrics


async def test_socket_cap_per_device_answers_auth_429(server_factory: Any) -> None:
    server: RunningServer = await server_factory(max_sockets_per_device=2)
    with trio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            for _ in range(2):
                await stack.enter_async_context(
                    open_client(server.url, token=server.token(device="tab"))
                )
            third = await stack.enter_async_context(open_client(server.url))
            with pytest.raises(AuthFailed) as refused:
                await third.authenticate(server.token(device="tab"))
            assert refused.value.code == 429
            assert refused.value.error_code == "TOO_MANY_SOCKETS"
            # Another device of the same session is not affected.
            async with open_client(server.url, token=server.token(device="other")) as other:
                await other.snapshot()
    assert server.app.service.device_buckets.__len__() == 0  # shared buckets released


async def test_handshake_rate_per_address_answers_429_with_retry_after(
    server_factory: Any,
) -> None:
    server: RunningServer = await server_factory(
        handshake_rate=0.001, handshake_burst=3, rate_exempt_addresses=()
    )
    with trio.fail_after(BOUND):
        for _ in range(3):
            async with open_websocket_url(server.url):
                pass
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(server.url):
                pass
    assert refused.value.status_code == 429
    headers = {k.lower(): v for k, v in refused.value.headers or []}
    assert headers[b"retry-after"] == b"1"
    metrics = server.app.metrics.render().decode()
    assert 'syncbridge_refusals_total{reason="handshake_address_rate"} 1.0' in metrics


async def test_handshake_rate_exempts_configured_addresses(server_factory: Any) -> None:
    server: RunningServer = await server_factory(handshake_rate=0.001, handshake_burst=1)
    with trio.fail_after(BOUND):
        for _ in range(5):  # loopback is exempt by default
            async with open_client(server.url, token=server.token()) as client:
                await client.snapshot()
