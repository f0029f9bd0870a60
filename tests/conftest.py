"""Shared fixtures: the servers and tokens come from SyncBridge's own pytest plugin
(``syncbridge.testing``); the names the suite has always used are kept here."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from syncbridge.settings import Settings
from syncbridge.testing import RunningServer, TokenMinter, server_settings
from syncbridge.testing import start_server as _start_server
from syncbridge.testing.plugin import ServerFactory

from .redis_harness import redis_cluster, redis_server

__all__ = [
    "SECRET",
    "RunningServer",
    "make_settings",
    "mint",
    "redis_cluster",  # fixture, for pytest
    "redis_server",  # fixture, for pytest
    "start_server",
]

#: The suite's one secret: server processes the tests spawn get it in JWT_SECRET.
SECRET = "test-secret-that-is-at-least-32-bytes-long"


def make_settings(**overrides: Any) -> Settings:
    """Test settings: loopback, ``SECRET``, short deadlines unless overridden."""
    return server_settings(secret=SECRET, **overrides)


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
    """A token signed with ``secret`` (the suite's ``SECRET`` by default)."""
    return TokenMinter(secret=secret).token(
        user=user, device=device, session=session, ttl=ttl, roles=roles, now=now
    )


async def start_server(
    nursery: trio.Nursery, settings: Settings | None = None, **app_kw: Any
) -> RunningServer:
    """Start a server in ``nursery`` (``make_settings()`` by default); stop it with
    ``aclose()`` or by setting ``.stop``."""
    return await _start_server(nursery, settings or make_settings(), **app_kw)


@pytest.fixture
def syncbridge_secret() -> str:
    """The plugin's servers use the suite's ``SECRET``, so ``mint()`` tokens work on them."""
    return SECRET


@pytest.fixture
def server(syncbridge_server: RunningServer) -> RunningServer:
    """The plugin's ``syncbridge_server`` (memory store, ``SECRET``), drained at teardown."""
    return syncbridge_server


@pytest.fixture
def server_factory(syncbridge_server_factory: ServerFactory) -> ServerFactory:
    """Start a server with custom settings: ``await server_factory(outbox_size=2)``."""
    return syncbridge_server_factory
