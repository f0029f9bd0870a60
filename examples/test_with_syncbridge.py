"""Testing an application against SyncBridge with its pytest plugin.

Install ``syncbridge``, ``pytest`` and ``pytest-trio``; the plugin loads itself
(entry point ``pytest11: syncbridge``). Then ``pytest test_with_syncbridge.py``
runs these against an in-process server with the memory store, or
``pytest --syncbridge-redis-url redis://localhost:6379/0 test_with_syncbridge.py``
against a Redis (nothing in it is flushed; each test has its own session id).
"""

from __future__ import annotations

import pytest
import trio

from syncbridge.client import Client, ServerError, SyncClient, open_client
from syncbridge.testing import RunningServer, TokenMinter
from syncbridge.testing.plugin import ServerFactory

# Not needed with ``trio_mode = true`` in the project's pytest configuration.
pytestmark = pytest.mark.trio


async def test_a_change_reaches_the_other_device(
    syncbridge_client: Client, syncbridge_sync_client: SyncClient
) -> None:
    with trio.fail_after(10):
        version = await syncbridge_client.update("theme", "dark")
        await syncbridge_sync_client.wait_until(lambda _state, seen: seen >= version)
    assert syncbridge_sync_client.state["theme"] == "dark"


async def test_a_back_end_writes_with_a_service_token(
    syncbridge_server: RunningServer,
    syncbridge_tokens: TokenMinter,
    syncbridge_sync_client: SyncClient,
) -> None:
    with trio.fail_after(10):
        async with open_client(syncbridge_server.url, token=syncbridge_tokens.service()) as api:
            version = await api.update("plan", "pro")
        await syncbridge_sync_client.wait_until(lambda _state, seen: seen >= version)
    assert syncbridge_sync_client.state["plan"] == "pro"


async def test_a_server_with_custom_settings(
    syncbridge_server_factory: ServerFactory, syncbridge_tokens: TokenMinter
) -> None:
    server = await syncbridge_server_factory(max_keys=1)
    with trio.fail_after(10):
        async with open_client(server.url, token=syncbridge_tokens.device("phone")) as phone:
            await phone.update("one", 1)
            with pytest.raises(ServerError):
                await phone.update("two", 2)


async def test_minutes_of_timeouts_on_the_mock_clock(
    autojump_clock: trio.abc.Clock, syncbridge_server: RunningServer
) -> None:
    # A socket that never signs in is closed after AUTH_TIMEOUT (30 s): instantly here.
    async with open_client(syncbridge_server.url, heartbeat_interval=None) as silent:
        closed = await silent.wait_closed(timeout=600)
    assert closed.code == 4408
    assert trio.current_time() >= 30
