"""End to end on Redis: several SyncBridge processes sharing one Redis (or a cluster).

Shared helpers for the tests in this package; every wait they do is bounded by
the caller's ``trio.fail_after`` or by their own ``timeout``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio

from syncbridge.client import Client, open_client
from syncbridge.protocol.messages import MessageType
from syncbridge.settings import Settings

from ..conftest import RunningServer, make_settings, mint, start_server
from ..process.proc import http_get_json

__all__ = [
    "health",
    "open_resuming",
    "open_servers",
    "redis_settings",
    "resume_auth",
    "updates_until",
]


CLEANUP_BOUND = 5.0  # seconds; a connection's clean-up is bounded by CLEANUP_TIMEOUT (2 s)


def redis_settings(url: str, **overrides: Any) -> Settings:
    """Test settings for a server on the Redis at ``url``."""
    return make_settings(redis_url=url, **overrides)


@asynccontextmanager
async def open_servers(settings: Settings, count: int = 1) -> AsyncIterator[list[RunningServer]]:
    """``count`` servers (each its own SyncBridge process) with ``settings``.

    On exit every connection's clean-up (which still talks to Redis) is waited
    for, then the servers are cancelled, so no server is still using Redis when
    the test's Redis goes away. (A graceful stop would also wait for hypercorn
    to let go of sockets the clients closed, up to PING_INTERVAL each; a short
    PING_INTERVAL is no way out, as trio-websocket then fails now and then to
    answer a ping that crosses its own Close: python-trio/trio-websocket#184.)
    """
    async with trio.open_nursery() as nursery:
        servers = [await start_server(nursery, settings) for _ in range(count)]
        try:
            yield servers
        finally:
            with trio.move_on_after(CLEANUP_BOUND, shield=True):
                for server in servers:
                    await server.app.wait_no_connections()
            nursery.cancel_scope.cancel()


async def updates_until(
    client: Client, version: int, *, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The StateUpdate pushes ``client`` receives up to the one with ``version`` (inclusive).

    Every process receives a session's events from one Redis channel, in the order
    Redis published them, so once ``version`` has arrived every earlier push has too.
    Other message types stay in the client's backlog.
    """
    pushes = []
    while True:
        push = await client.wait_for(MessageType.STATE_UPDATE, timeout=timeout)
        pushes.append(push)
        if push["payload"]["version"] >= version:
            return pushes


async def resume_auth(
    client: Client, token: str, last_version: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Auth with ``last_version``; return the AuthSuccess and the Resume that follows it."""
    success = await client.request(MessageType.AUTH, {"token": token, "last_version": last_version})
    resume = await client.wait_for(MessageType.RESUME)
    assert resume["correlation_id"] == success["correlation_id"]
    return success, resume


def open_resuming(url: str, **kw: Any) -> Any:
    """A connection that is not yet authenticated (Auth is sent by the test)."""
    return open_client(url, heartbeat_interval=None, **kw)


async def health(http_url: str) -> tuple[int, Any]:
    """GET the full health document (/health/details, with an operator token) of a
    server given its ``http://host:port`` URL."""
    port = urlsplit(http_url).port
    assert port is not None
    ops = mint(user="ops", device="cli", session="ops", roles=("metrics",))
    return await http_get_json(port, "/health/details", token=ops)
