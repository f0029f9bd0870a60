"""An in-process SyncBridge server for tests: real listener on a free loopback port, real store.

Task tree (the caller's nursery, or :func:`open_server`'s own)::

    nursery ── _run_server ── syncbridge.server.serve (lifespan, accept loop, handlers)

Stopping sets ``stop``: the server drains exactly as on SIGTERM (sockets closed
with 1001 within ``shutdown_timeout``), then ``stopped`` is set.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from syncbridge.app import SyncBridgeApp
from syncbridge.client import Client, SyncClient, open_client, open_sync_client
from syncbridge.server import ServerInfo, serve
from syncbridge.settings import Settings, load_settings
from syncbridge.testing.tokens import TokenMinter

__all__ = ["RunningServer", "ServerStuck", "open_server", "server_settings", "start_server"]

# Beyond the server's own bounds (drain, clean-up, hypercorn's grace): a stop
# taking longer than this is a bug worth a failing test, not a hang.
_STOP_MARGIN = 10.0


class ServerStuck(RuntimeError):
    """The server did not finish stopping within its own shutdown bounds."""


def server_settings(
    *, secret: str | None = None, redis_url: str | None = None, **overrides: Any
) -> Settings:
    """Settings for a test server: ``127.0.0.1:0``, ``secret`` (random when None), the
    memory store unless ``redis_url``, a 5 s drain; ``overrides`` are Settings fields.

    The process environment is not read, so a ``JWT_SECRET`` or ``REDIS_URL``
    exported in the shell cannot leak into a test.
    """
    base = load_settings(environ={}, overrides={"addr": "127.0.0.1:0"})
    values: dict[str, Any] = {
        "jwt_secret": secret or secrets.token_urlsafe(48),
        "secret_is_ephemeral": False,
        "shutdown_timeout": 5.0,
    }
    if redis_url:
        values["redis_url"] = redis_url
    values.update(overrides)
    return attrs.evolve(base, **values)


@attrs.define(eq=False)
class RunningServer:
    """A started server: where to reach it, tokens it accepts, and how to stop it."""

    app: SyncBridgeApp
    info: ServerInfo
    stop: trio.Event = attrs.Factory(trio.Event)
    #: Set once ``serve`` has returned (after the drain).
    stopped: trio.Event = attrs.Factory(trio.Event)

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/ws``."""
        return self.info.ws_url

    @property
    def http(self) -> str:
        """``http://127.0.0.1:PORT`` (health, metrics, console)."""
        return self.info.http_url

    @property
    def tokens(self) -> TokenMinter:
        """Mints tokens with this server's secret."""
        return TokenMinter(secret=self.settings.jwt_secret)

    def token(self, user: str = "u1", device: str = "d1", session: str = "s1", **kw: Any) -> str:
        """A token this server accepts (``roles``, ``ttl``, ``now`` as :class:`TokenMinter`)."""
        return self.tokens.token(user=user, device=device, session=session, **kw)

    def client(
        self,
        *,
        user: str = "u1",
        device: str = "d1",
        session: str = "s1",
        **options: Any,
    ) -> AbstractAsyncContextManager[Client]:
        """``open_client`` signed in as ``user``/``device`` in ``session``."""
        token = self.token(user=user, device=device, session=session)
        return open_client(self.url, token=token, **options)

    def sync_client(
        self,
        *,
        user: str = "u1",
        device: str = "d1",
        session: str = "s1",
        **options: Any,
    ) -> AbstractAsyncContextManager[SyncClient]:
        """``open_sync_client`` signed in as ``user``/``device`` in ``session``."""
        token = self.token(user=user, device=device, session=session)
        return open_sync_client(self.url, token=token, **options)

    async def aclose(self) -> None:
        """Stop (drain) and return once the server has stopped; idempotent.

        Raises :class:`ServerStuck` if the server overruns its own shutdown
        bounds (``shutdown_timeout`` + ``cleanup_timeout`` + a margin).
        """
        self.stop.set()
        bound = self.settings.shutdown_timeout + self.settings.cleanup_timeout + _STOP_MARGIN
        with trio.move_on_after(bound) as scope:
            await self.stopped.wait()
        if scope.cancelled_caught:
            raise ServerStuck(f"server on {self.http} still stopping after {bound:.0f}s")


async def start_server(
    nursery: trio.Nursery, settings: Settings | None = None, **app_kw: Any
) -> RunningServer:
    """Start a server in ``nursery``; returns once it listens. Stop it with ``aclose()``
    (or by setting ``stop``); ``app_kw`` go to :class:`SyncBridgeApp`."""
    app = SyncBridgeApp(settings or server_settings(), **app_kw)
    stop, stopped = trio.Event(), trio.Event()
    info: ServerInfo = await nursery.start(_run_server, app, stop, stopped)
    return RunningServer(app=app, info=info, stop=stop, stopped=stopped)


async def _run_server(
    app: SyncBridgeApp,
    stop: trio.Event,
    stopped: trio.Event,
    *,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await serve(app, shutdown_trigger=stop.wait, task_status=task_status)
    finally:
        stopped.set()


@asynccontextmanager
async def open_server(
    settings: Settings | None = None, **app_kw: Any
) -> AsyncIterator[RunningServer]:
    """A started server for the block; drained and stopped when the block exits.

    An exception raised in the block comes out as it is (not in an exception group).
    """
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings, **app_kw)
        try:
            yield running
        except Exception as exc:
            failure = exc
        finally:
            with trio.CancelScope(shield=True):
                await running.aclose()
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
