"""Serving the app with hypercorn's trio worker; the only module that imports hypercorn."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from syncbridge.app import WS_PATH, SyncBridgeApp
from syncbridge.settings import Settings

__all__ = ["ServerInfo", "hypercorn_config", "serve", "wait_for_signal"]

log = logging.getLogger(__name__)

# After our own drain has closed every WebSocket, hypercorn only has to finish
# plain HTTP requests in flight.
_HYPERCORN_GRACE = 2.0


def hypercorn_config(settings: Settings) -> Config:
    """hypercorn's configuration for our settings."""
    config = Config()
    host = settings.host
    config.bind = [f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"]
    config.websocket_max_message_size = settings.max_message_bytes
    # hypercorn sends the pings (keeping proxies and NATs open) but never checks
    # pongs; liveness is enforced by the connection's watchdog instead.
    config.websocket_ping_interval = settings.ping_interval
    config.graceful_timeout = _HYPERCORN_GRACE
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


class ServerInfo:
    """Where a started server listens."""

    def __init__(self, binds: list[str]) -> None:
        self.binds = binds
        self.http_url = binds[0]
        self.ws_url = binds[0].replace("http://", "ws://", 1) + WS_PATH


async def wait_for_signal() -> None:
    """Return on the first SIGTERM or SIGINT (a second SIGINT interrupts for real)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            return


async def serve(
    app: SyncBridgeApp,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] = wait_for_signal,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns, then drain within the shutdown timeout."""
    settings = app.settings

    async def shut_down() -> None:
        await shutdown_trigger()
        with trio.CancelScope(shield=True):
            await app.drain(settings.shutdown_timeout)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn_serve(
                app,  # type: ignore[arg-type]
                hypercorn_config(settings),
                shutdown_trigger=shut_down,
                mode="asgi",
                task_status=task_status,
            )
        )
        task_status.started(ServerInfo(list(binds)))
