"""The application: HTTP routes (ASGI, served by hypercorn), WebSocket admission
and connections (served by the engine in :mod:`syncbridge.ws`), lifespan, draining.

:meth:`SyncBridgeApp.run` owns the store's background tasks; the server's
handler nursery owns one task per socket, each running one :class:`Connection`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from syncbridge.auth import TokenAuthority
from syncbridge.backend import MemoryBackend, create_backend
from syncbridge.connection import Connection
from syncbridge.errors import CloseCode
from syncbridge.http.admin import AdminRoutes, is_admin_path
from syncbridge.http.api import ApiContext, create_api
from syncbridge.http.console import Console, is_console_path
from syncbridge.http.health import health, readiness
from syncbridge.http.response import send_json
from syncbridge.hub import Hub
from syncbridge.limits import AddressRate
from syncbridge.metrics import Metrics
from syncbridge.service import SessionService
from syncbridge.settings import Settings
from syncbridge.store.base import Store
from syncbridge.ws.handshake import Refusal, open_websocket

if TYPE_CHECKING:
    import socket

    from websockets.http11 import Request

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
            token_max_lifetime=settings.token_max_lifetime,
            max_sockets_per_device=settings.max_sockets_per_device,
            rate_limit=settings.rate_limit,
            rate_burst=settings.rate_burst,
            order_timeout=settings.store_timeout + settings.slow_consumer_timeout,
            leave_timeout=settings.cleanup_timeout / 2,
            metrics=self.metrics,
            clock=clock,
        )
        self.admin = AdminRoutes(self, self.service.authority, self.metrics)
        self.console = Console(self, self.admin)
        self.api = create_api(ApiContext.create(self.service, settings))
        self.connections: dict[int, Connection] = {}
        self.address_rate = AddressRate(
            settings.handshake_rate,
            settings.handshake_burst,
            exempt=settings.rate_exempt_addresses,
        )
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
        self.metrics.connection_limit.set(settings.max_connections)

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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The lifespan: the store's background tasks and the console's sampler, until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.backend.run)
            nursery.start_soon(self.console.run)
            task_status.started()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and is_console_path(scope["path"]) and not self.settings.admin_addr:
            await self.console.handle(scope, receive, send)  # with ADMIN_ADDR: there only
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket" and (await receive())["type"] == "websocket.connect":
            if scope["path"] != WS_PATH:
                await self._reject(send, 404, f"no WebSocket at {scope['path']}; use {WS_PATH}")
            else:
                # Only reachable through hypercorn: a WebSocket upgrade on a kept-alive
                # HTTP/1.1 connection, or over HTTP/2. /ws is served by the engine on
                # a connection of its own (what every WebSocket client opens).
                await self._reject(
                    send, 400, f"open the WebSocket to {WS_PATH} on a new HTTP/1.1 connection"
                )

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
            status, body = await health(self, scope)
            await send_json(send, status, body)
        elif is_console_path(scope["path"]):
            await self.console.handle(scope, receive, send)
        else:
            await self.admin.handle(scope, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        method = scope["method"]
        if path.startswith("/v1/"):
            await self.api(scope, receive, send)
        elif is_admin_path(path):
            if self.settings.admin_addr:  # served on the private address only
                await send_json(send, 404, {"error": f"no route for {path}"})
            else:
                await self.admin.handle(scope, send)
        elif path in ("/health", "/health/live", "/health/ready") and method not in ("GET", "HEAD"):
            await send_json(
                send, 405, {"error": "method not allowed"}, headers=[(b"allow", b"GET")]
            )
        elif path == "/health":
            status, body = await health(self, scope)
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

    # -- WebSocket ------------------------------------------------------------

    def admit(self, request: Request, address: str) -> Refusal | None:
        """Whether a WebSocket handshake from ``address`` may proceed: None, or
        (status, message). Every refusal is counted by reason."""
        refuse = self.service.refusals.refuse
        if self.draining:
            refuse("handshake_draining", "WebSocket from %s", address)
            return 503, "server is shutting down; reconnect shortly"
        origin = request.headers.get("Origin")
        allowed = self.settings.allowed_origins
        if origin is not None and allowed and origin not in allowed:
            refuse("handshake_origin", "WebSocket from %s with origin %r", address, origin)
            return 403, "origin not allowed"
        if not self.address_rate.allow(address, trio.current_time()):
            refuse("handshake_address_rate", "WebSocket from %s", address)
            return 429, "too many connection attempts from this address; retry later"
        if len(self.connections) >= self.settings.max_connections:
            refuse("handshake_connection_cap", "WebSocket from %s", address)
            return 503, "server at its connection limit; reconnect shortly"
        return None

    async def open_websocket(
        self, sock: socket.socket, address: tuple[str, int], head: bytes
    ) -> Connection | None:
        """Answer the handshake in ``head``; the accepted connection (not yet running),
        or None when it was refused (the answer was written and ``sock`` closed)."""
        settings = self.settings
        host = address[0]
        peer = f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
        websocket = None
        try:
            with trio.move_on_after(settings.handshake_timeout):
                websocket = await open_websocket(
                    sock,
                    head,
                    max_message_bytes=settings.max_message_bytes,
                    deflate=settings.ws_deflate,
                    admit=partial(self.admit, address=host),
                )
        finally:
            if websocket is None:
                trio.lowlevel.notify_closing(sock)
                sock.close()
        if websocket is None:
            return None
        return Connection(
            key=next(self._keys),
            service=self.service,
            settings=settings,
            transport=websocket,
            client=peer,
        )

    async def serve_connection(self, connection: Connection) -> None:
        """Serve an accepted WebSocket until it closes."""
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
            # Peers that do not complete the closing handshake (one that stopped
            # reading, say) must not hold the shutdown: cut them off.
            log.warning(
                "%d connections still open after %.1fs: aborting them",
                len(self.connections),
                timeout,
            )
            for connection in list(self.connections.values()):
                connection.abort()
            with trio.move_on_after(self.settings.cleanup_timeout):
                await self._no_connections.wait()

    async def wait_no_connections(self) -> None:
        """Block until no WebSocket connection is open (tests and drain use it)."""
        await self._no_connections.wait()


def _as_websocket_response(send: Send) -> Send:
    async def translated(message: dict[str, Any]) -> None:
        await send({**message, "type": "websocket." + message["type"]})

    return translated
