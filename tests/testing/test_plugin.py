"""The pytest plugin's fixtures, used as an application team would: real server, real sockets."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import attrs
import pytest
import trio

from syncbridge.client import Client, ServerError, SyncClient, open_client
from syncbridge.errors import CloseCode
from syncbridge.settings import Settings
from syncbridge.testing import RunningServer, TokenMinter
from syncbridge.testing.plugin import MockClockWithRedis, ServerFactory, check_clock

from ..process.proc import http_get_json

WAIT = 10.0


def _port(server: RunningServer) -> int:
    port = urlsplit(server.http).port
    assert port is not None
    return port


async def test_plugin_clients_share_the_fixture_session(
    syncbridge_server: RunningServer,
    syncbridge_client: Client,
    syncbridge_sync_client: SyncClient,
    syncbridge_session: str,
) -> None:
    with trio.fail_after(WAIT):
        version = await syncbridge_client.update("theme", "dark")
        await syncbridge_sync_client.wait_until(lambda _state, v: v >= version)
    assert dict(syncbridge_sync_client.state) == {"theme": "dark"}
    assert syncbridge_server.app.session_count == 1
    assert syncbridge_session.startswith("test-")


async def test_plugin_server_drains_like_sigterm(
    syncbridge_server_factory: ServerFactory, syncbridge_tokens: TokenMinter
) -> None:
    running = await syncbridge_server_factory()
    with trio.fail_after(WAIT):
        async with open_client(running.url, token=syncbridge_tokens.device()) as client:
            running.stop.set()  # what the fixtures' teardown does (aclose)
            closed = await client.wait_closed()
        await running.aclose()  # returns once drained; idempotent
        await running.aclose()
    assert closed.code == CloseCode.GOING_AWAY
    assert running.stopped.is_set()


async def test_plugin_server_factory_applies_settings(
    syncbridge_server_factory: ServerFactory, syncbridge_tokens: TokenMinter
) -> None:
    small = await syncbridge_server_factory(max_keys=1)
    assert small.settings.max_keys == 1
    with trio.fail_after(WAIT):
        async with open_client(small.url, token=syncbridge_tokens.device()) as client:
            await client.update("a", 1)
            with pytest.raises(ServerError):
                await client.update("b", 2)


async def test_plugin_tokens_carry_their_roles(
    syncbridge_server: RunningServer, syncbridge_tokens: TokenMinter
) -> None:
    port = _port(syncbridge_server)
    with trio.fail_after(WAIT):
        for token, expected in [
            (syncbridge_tokens.admin(), 200),
            (syncbridge_tokens.metrics(), 200),
            (syncbridge_tokens.device(), 403),
        ]:
            status, _ = await http_get_json(port, "/health/details", token=token)
            assert status == expected
        async with open_client(syncbridge_server.url, token=syncbridge_tokens.service()) as c:
            assert (await c.snapshot())["version"] == 0


async def test_plugin_mints_for_the_servers_secret(
    syncbridge_server: RunningServer, syncbridge_secret: str, syncbridge_token: str
) -> None:
    assert syncbridge_server.settings.jwt_secret == syncbridge_secret
    expired = TokenMinter(secret=syncbridge_secret).device(ttl=60, now=time.time() - 120)
    with trio.fail_after(WAIT):
        async with open_client(syncbridge_server.url, token=syncbridge_token):
            pass
        with pytest.raises(ServerError) as refused:
            async with open_client(syncbridge_server.url, token=expired):
                pass
    assert refused.value.code == 401


# ------------------------------------------------------------------ trio's mock clock
#
# Everything below runs on autojump_clock: the server, its clients and sockets are
# in this process, on loopback, so whenever every task waits the clock may jump to
# the next deadline. Minutes of server timeouts pass in milliseconds.


async def test_plugin_autojump_clock_runs_auth_timeout_instantly(
    autojump_clock: trio.abc.Clock, syncbridge_server: RunningServer
) -> None:
    started = time.monotonic()
    async with open_client(syncbridge_server.url, heartbeat_interval=None) as idle:
        closed = await idle.wait_closed(timeout=3600)
    assert closed.code == CloseCode.AUTH_TIMEOUT
    assert trio.current_time() >= syncbridge_server.settings.auth_timeout
    assert time.monotonic() - started < WAIT


async def test_plugin_autojump_clock_keeps_a_heartbeating_client_for_an_hour(
    autojump_clock: trio.abc.Clock,
    syncbridge_client: Client,
    syncbridge_sync_client: SyncClient,
) -> None:
    started = time.monotonic()
    # An hour of virtual time: 120 client Heartbeats, 120 server pings, and the
    # liveness deadline (60 s) never reached.
    with trio.move_on_after(3600):
        await syncbridge_client.wait_closed(timeout=7200)
    version = await syncbridge_client.update("after", "an hour")
    await syncbridge_sync_client.wait_until(lambda _state, v: v >= version, timeout=60)
    assert syncbridge_sync_client.state["after"] == "an hour"
    assert trio.current_time() >= 3600
    assert time.monotonic() - started < WAIT


async def test_plugin_autojump_clock_refuses_a_redis_store(
    autojump_clock: trio.abc.Clock, syncbridge_settings: Settings
) -> None:
    check_clock(syncbridge_settings)  # the memory store: fine
    with pytest.raises(MockClockWithRedis, match="autojump_clock"):
        check_clock(attrs.evolve(syncbridge_settings, redis_url="redis://127.0.0.1:1/0"))


async def test_plugin_real_clock_allows_a_redis_store(syncbridge_settings: Settings) -> None:
    check_clock(attrs.evolve(syncbridge_settings, redis_url="redis://127.0.0.1:1/0"))
