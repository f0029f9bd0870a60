"""Shared fixtures: a real SyncBridge server under hypercorn on 127.0.0.1:0, and tokens."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio

from syncbridge.app import SyncBridgeApp
from syncbridge.auth import TokenAuthority
from syncbridge.server import ServerInfo, serve
from syncbridge.settings import Settings, load_settings

from .redis_harness import redis_cluster, redis_server

__all__ = ["redis_cluster", "redis_server"]  # fixtures, for pytest

SECRET = "test-secret-that-is-at-least-32-bytes-long"


def make_settings(**overrides: Any) -> Settings:
    """Test settings: loopback, a known secret, short deadlines unless overridden."""
    base = load_settings(environ={}, overrides={"addr": "127.0.0.1:0"})
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "secret_is_ephemeral": False,
        "shutdown_timeout": 5.0,
    }
    values.update(overrides)
    return attrs.evolve(base, **values)


@attrs.define
class RunningServer:
    """A server started by a test, with what tests need to reach and inspect it."""

    app: SyncBridgeApp
    info: ServerInfo
    stop: trio.Event
    #: Set once ``serve`` has returned (after the drain).
    stopped: trio.Event = attrs.Factory(trio.Event)

    @property
    def url(self) -> str:
        return self.info.ws_url

    @property
    def http(self) -> str:
        return self.info.http_url

    def token(self, user: str = "u1", device: str = "d1", session: str = "s1", **kw: Any) -> str:
        return mint(user=user, device=device, session=session, **kw)


def mint(
    *,
    user: str = "u1",
    device: str = "d1",
    session: str = "s1",
    ttl: float = 900,
    roles: tuple[str, ...] = (),
    secret: str = SECRET,
    now: float | None = None,
) -> str:
    token, _ = TokenAuthority(secret).mint(
        user_id=user,
        device_id=device,
        session_id=session,
        ttl=ttl,
        roles=roles,
        now=time.time() if now is None else now,
    )
    return token


async def start_server(
    nursery: trio.Nursery, settings: Settings | None = None, **app_kw: Any
) -> RunningServer:
    """Start a server in ``nursery``; it stops (drains) when ``.stop`` is set."""
    app = SyncBridgeApp(settings or make_settings(), **app_kw)
    stop = trio.Event()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[ServerInfo]) -> None:
        try:
            await serve(app, shutdown_trigger=stop.wait, task_status=task_status)
        finally:
            stopped.set()

    info: ServerInfo = await nursery.start(run)
    return RunningServer(app=app, info=info, stop=stop, stopped=stopped)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    running = await start_server(nursery)
    yield running
    running.stop.set()


@pytest.fixture
def server_factory(nursery: trio.Nursery) -> Callable[..., Any]:
    """Start a server with custom settings: ``await server_factory(outbox_size=2)``."""

    async def factory(**overrides: Any) -> RunningServer:
        return await start_server(nursery, make_settings(**overrides))

    return factory
