"""The pytest plugin (entry point ``pytest11: syncbridge``): SyncBridge fixtures for pytest-trio.

The only module of the package that imports pytest; pytest loads it, nothing
else does. Fixtures (all function-scoped; the async ones need pytest-trio,
``trio_mode = true`` or ``@pytest.mark.trio``):

=============================  ===============================================
``syncbridge_redis_url``       Redis URL for servers, or None for the memory store
``syncbridge_secret``          the JWT secret servers use (random per test)
``syncbridge_session``         a session id unique to the test
``syncbridge_settings``        the settings ``syncbridge_server`` runs with
``syncbridge_server``          a started :class:`RunningServer`; drained at teardown
``syncbridge_server_factory``  ``await factory(**settings)`` starts another one
``syncbridge_tokens``          a :class:`TokenMinter` with the secret and session
``syncbridge_token``           a device token (device ``d1``) for the session
``syncbridge_client``          an authenticated :class:`~syncbridge.client.Client`
``syncbridge_sync_client``     a :class:`~syncbridge.client.SyncClient`, synced
=============================  ===============================================

Override any of them in a ``conftest.py`` (same name) or parametrize them
(``@pytest.mark.parametrize("syncbridge_redis_url", [...])``).
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from syncbridge.client import Client, SyncClient, open_client, open_sync_client
from syncbridge.settings import Settings
from syncbridge.testing.server import RunningServer, server_settings, start_server
from syncbridge.testing.tokens import TokenMinter

__all__ = [
    "REDIS_URL_ENV",
    "MockClockWithRedis",
    "ServerFactory",
    "check_clock",
    "syncbridge_client",
    "syncbridge_redis_url",
    "syncbridge_secret",
    "syncbridge_server",
    "syncbridge_server_factory",
    "syncbridge_session",
    "syncbridge_settings",
    "syncbridge_sync_client",
    "syncbridge_token",
    "syncbridge_tokens",
]

REDIS_URL_ENV = "SYNCBRIDGE_TEST_REDIS_URL"
_OPTION = "--syncbridge-redis-url"
_INI = "syncbridge_redis_url"

#: ``await factory(**overrides)`` or ``await factory(settings=...)``.
ServerFactory = Callable[..., Awaitable[RunningServer]]


class MockClockWithRedis(RuntimeError):
    """A Redis-backed server was asked for under trio's autojumping mock clock."""


def check_clock(settings: Settings) -> None:
    """Refuse a Redis store under an autojumping clock, with the reason.

    ``autojump_clock`` jumps to the next deadline whenever every task of this
    process waits. Loopback traffic between in-process tasks is delivered within
    the sending call, so the memory-store server works; a reply from another
    process (redis-server) is not, so the clock would jump past STORE_TIMEOUT
    while Redis is still answering and every store call would fail at random.
    """
    clock = trio.lowlevel.current_clock()
    autojumps = isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold != math.inf
    if autojumps and (settings.redis_url or settings.redis_addr):
        raise MockClockWithRedis(
            "syncbridge: a Redis-backed server cannot run under autojump_clock (the clock "
            "jumps past STORE_TIMEOUT while redis-server, another process, answers); use "
            "the memory store (no --syncbridge-redis-url) for mock-clock tests"
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--syncbridge-redis-url`` and the ``syncbridge_redis_url`` ini key."""
    group = parser.getgroup("syncbridge", "SyncBridge test servers")
    group.addoption(
        _OPTION,
        dest="syncbridge_redis_url",
        default=None,
        metavar="URL",
        help=f"run the syncbridge_server fixtures on this Redis (default: ${REDIS_URL_ENV}, "
        f"then the {_INI} ini key, else the in-memory store). Tests share it: "
        "nothing is flushed, so use syncbridge_session for distinct session ids.",
    )
    parser.addini(_INI, help="Redis URL for the syncbridge_server fixtures", default="")


@pytest.fixture
def syncbridge_redis_url(pytestconfig: pytest.Config) -> str | None:
    """The Redis URL servers use: the option, else ``$SYNCBRIDGE_TEST_REDIS_URL``, else the
    ini key; None (the memory store) when none is set."""
    option = pytestconfig.getoption("syncbridge_redis_url")
    ini = pytestconfig.getini(_INI)
    for value in (option, os.environ.get(REDIS_URL_ENV), ini):
        if isinstance(value, str) and value:
            return value
    return None


@pytest.fixture
def syncbridge_secret() -> str:
    """The JWT secret of the test's servers: random, so no test depends on another's."""
    return secrets.token_urlsafe(48)


@pytest.fixture
def syncbridge_session() -> str:
    """A session id no other test uses (they may share one Redis)."""
    return f"test-{secrets.token_hex(6)}"


@pytest.fixture
def syncbridge_settings(syncbridge_secret: str, syncbridge_redis_url: str | None) -> Settings:
    """Settings for ``syncbridge_server`` and the base of ``syncbridge_server_factory``."""
    return server_settings(secret=syncbridge_secret, redis_url=syncbridge_redis_url)


@pytest.fixture
async def syncbridge_server(
    nursery: trio.Nursery, syncbridge_settings: Settings
) -> AsyncIterator[RunningServer]:
    """A server on a free 127.0.0.1 port in the fixture's nursery; drained at teardown."""
    check_clock(syncbridge_settings)
    running = await start_server(nursery, syncbridge_settings)
    yield running
    await running.aclose()


@pytest.fixture
async def syncbridge_server_factory(
    nursery: trio.Nursery, syncbridge_settings: Settings
) -> AsyncIterator[ServerFactory]:
    """Starts servers with custom settings: ``await factory(outbox_size=2)`` evolves
    ``syncbridge_settings``; ``await factory(settings=s)`` uses ``s``. Each is drained
    at teardown (the last started first)."""
    started: list[RunningServer] = []

    async def factory(*, settings: Settings | None = None, **overrides: Any) -> RunningServer:
        chosen = settings or attrs.evolve(syncbridge_settings, **overrides)
        check_clock(chosen)
        running = await start_server(nursery, chosen)
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        await running.aclose()


@pytest.fixture
def syncbridge_tokens(syncbridge_secret: str, syncbridge_session: str) -> TokenMinter:
    """Mints tokens for the test's servers; the default session is ``syncbridge_session``."""
    return TokenMinter(secret=syncbridge_secret, session=syncbridge_session)


@pytest.fixture
def syncbridge_token(syncbridge_tokens: TokenMinter) -> str:
    """A device token (user ``u1``, device ``d1``) for ``syncbridge_session``."""
    return syncbridge_tokens.device("d1")


@pytest.fixture
async def syncbridge_client(
    syncbridge_server: RunningServer, syncbridge_token: str
) -> AsyncIterator[Client]:
    """``open_client`` to ``syncbridge_server``, authenticated with ``syncbridge_token``."""
    async with open_client(syncbridge_server.url, token=syncbridge_token) as client:
        yield client


@pytest.fixture
async def syncbridge_sync_client(
    syncbridge_server: RunningServer, syncbridge_tokens: TokenMinter
) -> AsyncIterator[SyncClient]:
    """``open_sync_client`` to ``syncbridge_server`` as device ``sync`` in
    ``syncbridge_session``; its mirror equals the server's state when the test starts."""
    token = syncbridge_tokens.device("sync")
    async with open_sync_client(syncbridge_server.url, token=token) as client:
        yield client
