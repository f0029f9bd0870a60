"""The Python client raises exactly the documented exceptions, never an exception group."""

from __future__ import annotations

import socket

import pytest
import trio

from syncbridge.client import AuthFailed, ConnectFailed, Disconnected, ServerError, open_client

from ..conftest import RunningServer, mint

BOUND = 10


async def test_client_bad_token_raises_auth_failed(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        with pytest.raises(AuthFailed) as refused:
            async with open_client(server.url, token=mint(secret="w" * 40)):
                raise AssertionError("a refused token must not yield a client")
    assert refused.value.code == 401
    assert isinstance(refused.value, ServerError)


async def test_client_unreachable_server_raises_connect_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with trio.fail_after(BOUND), pytest.raises(ConnectFailed) as failed:
            async with open_client(f"ws://127.0.0.1:{port}/ws"):
                raise AssertionError("unreachable")
    assert isinstance(failed.value, ConnectionError)
    assert "refused" in str(failed.value).lower()
    assert failed.value.status_code is None


async def test_client_refused_upgrade_raises_connect_failed_with_status(
    server: RunningServer,
) -> None:
    with trio.fail_after(BOUND), pytest.raises(ConnectFailed) as failed:
        async with open_client(server.url.replace("/ws", "/nowhere")):
            raise AssertionError("no WebSocket there")
    assert failed.value.status_code == 404


async def test_client_silent_server_raises_connect_failed_after_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # accepts at the TCP level but never answers the upgrade
        port = sock.getsockname()[1]
        with trio.fail_after(BOUND), pytest.raises(ConnectFailed, match="no answer"):
            async with open_client(f"ws://127.0.0.1:{port}/ws", connect_timeout=0.2):
                raise AssertionError("no upgrade")


@pytest.mark.parametrize("url", ["http://localhost:8080/ws", "localhost:8080"])
async def test_client_non_websocket_url_raises_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="ws://"):
        async with open_client(url):
            raise AssertionError("not a WebSocket URL")


async def test_client_errors_inside_the_block_come_out_unchanged(server: RunningServer) -> None:
    class Mine(Exception):
        pass

    with trio.fail_after(BOUND):
        with pytest.raises(Mine):
            async with open_client(server.url, token=server.token()):
                raise Mine
        with pytest.raises(ServerError) as refused:
            async with open_client(server.url, token=server.token()) as client:
                await client.update("k" * 100_000, 1)
        assert refused.value.code in (400, 413)


async def test_client_server_close_raises_disconnected(server: RunningServer) -> None:
    async def closed_then_request() -> None:
        async with open_client(server.url, token=server.token(), heartbeat_interval=None) as c:
            server.stop.set()
            await c.wait_closed()
            await c.snapshot()

    with trio.fail_after(BOUND), pytest.raises(Disconnected):
        await closed_then_request()
