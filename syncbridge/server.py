"""Serving the app: one listener, /ws on SyncBridge's engine, HTTP on hypercorn.

The only module that imports hypercorn. Task tree::

    serve ── nursery
        ├─ app.run               lifespan: store, pub/sub relay, presence upkeep
        ├─ accept_loop           the listening socket; each connection becomes
        └─ handlers nursery      one task: read the head, route
              ├─ /ws   → handshake (websockets' sans-IO protocol) → Connection nursery
              └─ other → hypercorn's TCPServer (HTTP/1.1; h2c only if configured)

Shutdown: the trigger fires → the app drains (new handshakes get 503, open
sockets close 1001, up to SHUTDOWN_TIMEOUT) → accepting stops → hypercorn's
keep-alive connections are told to finish, in-flight requests get a short grace.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from syncbridge.app import WS_PATH, SyncBridgeApp
from syncbridge.settings import Settings
from syncbridge.ws.listener import accept_loop, read_head, route, without_h2c_upgrade
from syncbridge.ws.stream import PrefixedStream

__all__ = ["ServerInfo", "hypercorn_config", "open_listener", "serve", "signal_trigger"]

log = logging.getLogger(__name__)


# After our own drain has closed every WebSocket, hypercorn only has to finish
# plain HTTP requests in flight.
_HYPERCORN_GRACE = 2.0
_BACKLOG = 2048


def open_listener(settings: Settings) -> socket.socket:
    """Bind the public listening socket (raises OSError, e.g. address in use).

    TCP_USER_TIMEOUT, which accepted sockets inherit, makes the kernel abort a
    connection whose sent data stays unacknowledged for ``send_stall_timeout``
    (a peer that vanished or stopped reading): hypercorn shields its socket
    writes from cancellation, and our writer would otherwise wait on it.
    """
    host = settings.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
            sock.setsockopt(
                socket.IPPROTO_TCP,
                socket.TCP_USER_TIMEOUT,
                int(settings.send_stall_timeout * 1000),
            )
        sock.bind((host, settings.port))
    except BaseException:
        sock.close()
        raise
    return sock


def hypercorn_config(settings: Settings) -> Config:
    """hypercorn's configuration for the HTTP side of our listener."""
    config = Config()
    config.graceful_timeout = _HYPERCORN_GRACE
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


class ServerInfo:
    """Where a started server listens."""

    def __init__(self, binds: list[str], admin_binds: list[str] | None = None) -> None:
        self.binds = binds
        self.http_url = binds[0]
        self.ws_url = binds[0].replace("http://", "ws://", 1) + WS_PATH
        self.admin_url = admin_binds[0] if admin_binds else None


@asynccontextmanager
async def signal_trigger() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A shutdown trigger that returns on the first SIGTERM or SIGINT.

    The signal receiver stays open until the server has finished draining:
    systemd (KillMode=control-group) and ``timeout`` signal a supervised worker
    directly as well as through its supervisor, and that second SIGTERM must be
    absorbed, not kill the drain with the default action.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def first_signal() -> None:
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                return

        yield first_signal


async def serve(
    app: SyncBridgeApp,
    *,
    listener: socket.socket | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` (default: SIGTERM or SIGINT) returns, then drain
    within the shutdown timeout.

    ``listener`` is a bound socket to serve on (a worker's inherited one);
    by default one is bound from the settings.
    """
    if shutdown_trigger is None:
        async with signal_trigger() as first_signal:
            await serve(
                app, listener=listener, shutdown_trigger=first_signal, task_status=task_status
            )
        return
    settings = app.settings
    sock = listener or open_listener(settings)
    try:
        sock.listen(_BACKLOG)
        sock.setblocking(False)
        address = sock.getsockname()
    except BaseException:
        sock.close()
        raise
    host, port = address[0], address[1]
    bind = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    http = _HttpSide(app, hypercorn_config(settings))
    try:
        async with trio.open_nursery() as lifespan:
            await lifespan.start(app.run)
            async with trio.open_nursery() as handlers:
                admin_binds: list[str] = []
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        accept_loop,
                        sock,
                        partial(_handle_connection, app, http),
                        handlers,
                        name="server.accept",
                    )
                    if settings.admin_addr:
                        admin_binds = await accepting.start(_serve_admin, app)
                    task_status.started(ServerInfo([bind], admin_binds))
                    await shutdown_trigger()
                    with trio.CancelScope(shield=True):
                        await app.drain(settings.shutdown_timeout)
                    accepting.cancel_scope.cancel()
                await http.terminate()
                handlers.cancel_scope.deadline = trio.current_time() + _HYPERCORN_GRACE
            lifespan.cancel_scope.cancel()
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


class _HttpSide:
    """hypercorn serving HTTP connections handed over by the router."""

    def __init__(self, app: SyncBridgeApp, config: Config) -> None:
        self._app = ASGIWrapper(app)  # type: ignore[arg-type]
        self._config = config
        self._context = WorkerContext(None)

    async def serve(self, stream: PrefixedStream) -> None:
        server = TCPServer(
            self._app,
            self._config,
            self._context,
            ConnectionState({}),
            stream,  # type: ignore[arg-type]
        )
        await server.run()

    async def terminate(self) -> None:
        """Tell idle keep-alive connections to close."""
        await self._context.terminated.set()


async def _handle_connection(
    app: SyncBridgeApp, http: _HttpSide, sock: socket.socket, address: tuple[str, int]
) -> None:
    settings = app.settings
    handed_over = False
    head: bytes | None = None
    try:
        with trio.move_on_after(settings.handshake_timeout):
            head = await read_head(sock)
        if not head:  # closed, too slow, or a head over the limit
            return
        kind = route(head, WS_PATH)
        if kind == "websocket":
            handed_over = True
            connection = await app.open_websocket(sock, address, head)
            del head  # not kept for the connection's lifetime
            if connection is not None:
                await app.serve_connection(connection)
            return
        if kind == "h2c" and not settings.http2_cleartext:
            return  # HTTP/2 without TLS is off: nothing this client can read
        if not settings.http2_cleartext:
            head = without_h2c_upgrade(head)
        handed_over = True
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        await http.serve(PrefixedStream(stream, head))
    finally:
        if not handed_over:
            trio.lowlevel.notify_closing(sock)
            sock.close()


async def _serve_admin(
    app: SyncBridgeApp, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    await hypercorn_serve(
        app.admin_asgi,  # type: ignore[arg-type]
        _admin_config(app.settings),
        mode="asgi",
        task_status=task_status,
    )


def _admin_config(settings: Settings) -> Config:
    config = Config()
    host, _, port = settings.admin_addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = _HYPERCORN_GRACE
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config
