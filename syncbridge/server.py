"""Serving the app with hypercorn's trio worker; the only module that imports hypercorn."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from syncbridge.app import WS_PATH, SyncBridgeApp
from syncbridge.settings import Settings

__all__ = ["ServerInfo", "hypercorn_config", "open_listener", "serve", "signal_trigger"]

log = logging.getLogger(__name__)


def _drop_partial_message_on_overflow() -> None:
    """Mitigate hypercorn keeping a half-filled message after answering 1009.

    hypercorn's WebsocketBuffer raises FrameTooLargeError but keeps its partial
    buffer; the next frame of the other type (text after binary or the reverse)
    then raises TypeError inside hypercorn, which ends the whole process. Clearing
    the buffer on overflow removes that path until /ws leaves hypercorn
    (tests/process/test_hostile_frames.py guards both orders).
    """
    from hypercorn.protocol import ws_stream

    extend = ws_stream.WebsocketBuffer.extend
    if getattr(extend, "_syncbridge_mitigated", False):
        return

    def extend_or_clear(self: ws_stream.WebsocketBuffer, event: object) -> None:
        try:
            extend(self, event)  # type: ignore[arg-type]
        except ws_stream.FrameTooLargeError:
            self.clear()
            raise

    extend_or_clear._syncbridge_mitigated = True  # type: ignore[attr-defined]
    ws_stream.WebsocketBuffer.extend = extend_or_clear  # type: ignore[method-assign]


_drop_partial_message_on_overflow()

# After our own drain has closed every WebSocket, hypercorn only has to finish
# plain HTTP requests in flight.
_HYPERCORN_GRACE = 2.0


def open_listener(settings: Settings) -> socket.socket:
    """Bind the public listening socket (raises OSError, e.g. address in use).

    We bind it ourselves rather than let hypercorn do it, to set
    TCP_USER_TIMEOUT, which accepted sockets inherit: hypercorn shields its
    socket writes from cancellation, so a peer that stops reading would
    otherwise hold its connection (and a graceful shutdown) forever. With the
    option, the kernel aborts such a connection after ``send_stall_timeout``.
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


def hypercorn_config(settings: Settings, listener: socket.socket) -> Config:
    """hypercorn's configuration for our settings, serving on ``listener``.

    hypercorn takes over the socket (its file descriptor) from here on.
    """
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.websocket_max_message_size = settings.max_message_bytes
    # hypercorn sends the pings (keeping proxies and NATs open) but never checks
    # pongs; liveness is enforced by the connection's reader deadline instead.
    config.websocket_ping_interval = settings.ping_interval
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
    config = hypercorn_config(settings, listener or open_listener(settings))

    async def shut_down() -> None:
        await shutdown_trigger()
        with trio.CancelScope(shield=True):
            await app.drain(settings.shutdown_timeout)

    admin_stop = trio.Event()

    async def serve_public(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await hypercorn_serve(
                app,  # type: ignore[arg-type]
                config,
                shutdown_trigger=shut_down,
                mode="asgi",
                task_status=task_status,
            )
        finally:
            admin_stop.set()

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_public)
        admin_binds: list[str] = []
        if settings.admin_addr:
            admin_binds = await nursery.start(
                lambda task_status: hypercorn_serve(
                    app.admin_asgi,  # type: ignore[arg-type]
                    _admin_config(settings),
                    shutdown_trigger=admin_stop.wait,
                    mode="asgi",
                    task_status=task_status,
                )
            )
        task_status.started(ServerInfo(list(binds), admin_binds))


def _admin_config(settings: Settings) -> Config:
    config = Config()
    host, _, port = settings.admin_addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = _HYPERCORN_GRACE
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config
