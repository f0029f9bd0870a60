"""The ASGI application: routes, WebSocket admission, lifespan and draining.

The lifespan owns the store's background task; hypercorn owns the per-socket
tasks, each of which runs one :class:`Connection` nursery.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from syncbridge.auth import TokenAuthority
from syncbridge.backend import MemoryBackend, create_backend
from syncbridge.connection import Connection
from syncbridge.errors import CloseCode
from syncbridge.http.admin import AdminRoutes, is_admin_path
from syncbridge.http.health import health, readiness
from syncbridge.http.response import send_json
from syncbridge.hub import Hub
from syncbridge.metrics import Metrics
from syncbridge.service import SessionService
from syncbridge.settings import Settings
from syncbridge.store.base import Store

__all__ = ["SyncBridgeApp"]

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

WS_PATH = "/ws"


class SyncBridgeApp:
    """The ASGI callable served by hypercorn."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.hub = Hub(
            slow_consumer_timeout=settings.slow_consumer_timeout,
            on_slow_consumers=self.metrics.slow_consumers.inc,
        )
        self.backend = (
            MemoryBackend(settings, self.hub, store=store)
            if store is not None
            else create_backend(settings, self.hub, metrics=self.metrics)
        )
        self.store = self.backend.store
        self.presence = self.backend.presence
        self.service = SessionService(
            store=self.store,
            hub=self.hub,
            presence=self.presence,
            broker=self.backend.broker,
            authority=TokenAuthority(settings.jwt_secret),
            token_ttl=settings.token_ttl,
            leave_timeout=settings.cleanup_timeout / 2,
            metrics=self.metrics,
            clock=clock,
        )
        self.admin = AdminRoutes(self, self.service.authority, self.metrics)
        self.connections: dict[int, Connection] = {}
        self.started_at = time.time()
        self.draining = False
        self._keys = itertools.count(1)
        self._no_connections = trio.Event()
        self._no_connections.set()
        self.metrics.bind_gauges(
            active=lambda: len(self.connections),
            authenticated=lambda: self.authenticated_connections,
            sessions=lambda: self.hub.session_count,
            outbox_depths=lambda: [c.outbox.depth for c in self.connections.values()],
        )

    # -- what /health reads ---------------------------------------------------

    @property
    def active_connections(self) -> int:
        """Open WebSocket connections."""
        return len(self.connections)

    @property
    def authenticated_connections(self) -> int:
        """Open WebSocket connections that have authenticated."""
        return sum(1 for c in self.connections.values() if c.claims is not None)

    @property
    def session_count(self) -> int:
        """Sessions with at least one device connected here."""
        return self.hub.session_count

    # -- ASGI -----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self.backend.run)
            except Exception as exc:
                log.exception("start-up failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()  # lifespan.shutdown
            nursery.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def admin_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app of the private ADMIN_ADDR listener: operator routes and /health."""
        if scope["type"] == "lifespan":
            # The main app's lifespan owns the backend; this one has nothing to run.
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            status, body = await health(self)
            await send_json(send, status, body)
        else:
            await self.admin.handle(scope, send)

    async def _http(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        method = scope["method"]
        if is_admin_path(path):
            if self.settings.admin_addr:  # served on the private address only
                await send_json(send, 404, {"error": f"no route for {path}"})
            else:
                await self.admin.handle(scope, send)
        elif path in ("/health", "/health/live", "/health/ready") and method not in ("GET", "HEAD"):
            await send_json(
                send, 405, {"error": "method not allowed"}, headers=[(b"allow", b"GET")]
            )
        elif path == "/health":
            status, body = await health(self)
            await send_json(send, status, body)
        elif path == "/health/live":
            await send_json(send, 200, {"status": "alive"})
        elif path == "/health/ready":
            status, body = await readiness(self)
            await send_json(send, status, body)
        elif path == WS_PATH:
            await send_json(
                send,
                426,
                {"error": "upgrade required: open a WebSocket to /ws"},
                headers=[(b"upgrade", b"websocket")],
            )
        else:
            await send_json(send, 404, {"error": f"no route for {path}"})

    async def _reject(self, send: Send, status: int, message: str) -> None:
        # ASGI's websocket.http.response extension lets the handshake be refused
        # with a real status and a readable body instead of a bare 403.
        await send_json(_as_websocket_response(send), status, {"error": message})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if scope["path"] != WS_PATH:
            await self._reject(send, 404, f"no WebSocket at {scope['path']}; use {WS_PATH}")
            return
        if self.draining:
            await self._reject(send, 503, "server is shutting down; reconnect shortly")
            return
        origin = _header(scope, b"origin")
        allowed = self.settings.allowed_origins
        if origin is not None and allowed and origin not in allowed:
            log.info("refused WebSocket from origin %r", origin)
            await self._reject(send, 403, "origin not allowed")
            return
        await send({"type": "websocket.accept"})
        client = scope.get("client")
        connection = Connection(
            key=next(self._keys),
            service=self.service,
            settings=self.settings,
            receive=receive,
            send=send,
            client=f"{client[0]}:{client[1]}" if client else "unknown",
        )
        if not self.connections:
            self._no_connections = trio.Event()
        self.connections[connection.key] = connection
        try:
            await connection.run()
        finally:
            del self.connections[connection.key]
            if not self.connections:
                self._no_connections.set()

    # -- shutdown -------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Refuse new sockets, close every open one with 1001, wait for them to finish."""
        self.draining = True
        log.info("draining %d connections", len(self.connections))
        for connection in list(self.connections.values()):
            connection.close(CloseCode.GOING_AWAY, "server restarting; reconnect")
        with trio.move_on_after(timeout) as scope:
            await self._no_connections.wait()
        if scope.cancelled_caught:
            log.warning("%d connections still open after %.1fs", len(self.connections), timeout)

    async def wait_no_connections(self) -> None:
        """Block until no WebSocket connection is open (tests and drain use it)."""
        await self._no_connections.wait()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _as_websocket_response(send: Send) -> Send:
    async def translated(message: dict[str, Any]) -> None:
        await send({**message, "type": "websocket." + message["type"]})

    return translated
