"""However sockets end, the server forgets them completely: state, presence and tasks.

Real server under hypercorn, real sockets, real clock; every wait is bounded and
waits on an event or on trio's scheduler, never on a sleep.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from syncbridge.app import SyncBridgeApp
from syncbridge.client import Client, open_client
from syncbridge.connection import Connection
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer

ServerFactory = Callable[..., Any]

# hypercorn keeps each socket's handler task (and, when the client closed first,
# the TCP socket) until its ping task next wakes, up to ping_interval after the
# WebSocket closed. A short interval keeps that wait short here.
PING_INTERVAL = 0.05


async def start(server_factory: ServerFactory, **overrides: Any) -> RunningServer:
    server: RunningServer = await server_factory(ping_interval=PING_INTERVAL, **overrides)
    return server


def live_tasks() -> int:
    """Every task of this trio run, found by walking the task tree from the root."""

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    return count(trio.lowlevel.current_root_task())


async def idle_task_count() -> int:
    await trio.testing.wait_all_tasks_blocked()
    return live_tasks()


async def assert_forgotten(app: SyncBridgeApp, baseline: int) -> None:
    """No trace of any connection: registries empty, task tree back to ``baseline``."""
    with trio.fail_after(10):
        await app.wait_no_connections()
        while live_tasks() != baseline:
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert app.connections == {}
    assert app.hub.session_count == 0
    assert app.hub.subscriber_count == 0
    assert app.presence.session_count == 0
    assert app.service.locks._locks == {}


@asynccontextmanager
async def raw_socket(
    server: RunningServer, *, receive_buffer: int | None = None
) -> AsyncIterator[tuple[WebSocketConnection, trio.SocketStream]]:
    """A trio-websocket connection over a TCP stream the test owns (and may cut)."""
    url = urlsplit(server.url)
    assert url.hostname is not None
    assert url.port is not None
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connect, so the window starts small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect((url.hostname, url.port))
    stream = trio.SocketStream(sock)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, url.hostname, url.path, message_queue_size=1
            )
            try:
                yield ws, stream
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()  # never leave the server writing to a socket nobody reads


async def raw_authenticate(ws: WebSocketConnection, token: str) -> None:
    await ws.send_message(orjson.dumps({"type": 7, "payload": {"token": token}}).decode())
    reply = orjson.loads(await ws.get_message())
    assert reply["type"] == MessageType.AUTH_SUCCESS


async def read_until_closed(ws: WebSocketConnection) -> tuple[list[dict[str, Any]], int | None]:
    """Every message still to come, and the close code that ended them."""
    messages = []
    while True:
        try:
            messages.append(orjson.loads(await ws.get_message()))
        except ConnectionClosed as exc:
            return messages, exc.reason.code if exc.reason else None


def server_side(app: SyncBridgeApp, device: str) -> Connection:
    (connection,) = [
        c for c in app.connections.values() if c.claims and c.claims.device_id == device
    ]
    return connection


async def test_cleanup_e2e_after_clean_abrupt_and_oversize_closes(
    server_factory: ServerFactory,
) -> None:
    server = await start(server_factory, max_message_bytes=64 * 1024)
    app = server.app
    baseline = await idle_task_count()
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            clients: dict[str, Client] = {}
            for session, devices in (("s1", "abc"), ("s2", "de")):
                for device in devices:
                    token = server.token(device=device, session=session)
                    clients[device] = await stack.enter_async_context(
                        open_client(server.url, token=token, heartbeat_interval=None)
                    )
            cut_ws, cut_stream = await stack.enter_async_context(raw_socket(server))
            await raw_authenticate(cut_ws, server.token(device="f", session="s3"))
            assert len(app.connections) == 6
            assert (app.hub.session_count, app.presence.session_count) == (3, 3)
            assert live_tasks() > baseline
            ends = {device: server_side(app, device) for device in "adf"}

            await cut_stream.aclose()  # TCP gone, no close frame
            await clients["a"].aclose()  # clean close 1000
            await clients["d"].send_raw("x" * (65 * 1024))
            assert (await clients["d"].wait_closed()).code == CloseCode.MESSAGE_TOO_BIG
            left = await clients["b"].wait_for(MessageType.DEVICE_LEFT)
            assert left["payload"]["device_id"] == "a"
            await clients["c"].update("still", "works")
            await clients["e"].wait_for(MessageType.DEVICE_LEFT)  # d is gone from s2
        # the rest close cleanly when the stack unwinds
    await assert_forgotten(app, baseline)
    # Each close is recorded truthfully: the clean close with the client's 1000,
    # the cut connection as 1006 (no close frame), the oversize message as the
    # server's own 1009.
    assert (ends["a"].peer_close_code, ends["a"].close_code) == (1000, None)
    assert (ends["f"].peer_close_code, ends["f"].close_code) == (1006, None)
    assert (ends["d"].peer_close_code, ends["d"].close_code) == (None, 1009)


async def test_cleanup_e2e_after_auth_timeout(server_factory: ServerFactory) -> None:
    server = await start(server_factory, auth_timeout=0.5)
    app = server.app
    baseline = await idle_task_count()
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            silent = [
                await stack.enter_async_context(open_client(server.url, heartbeat_interval=None))
                for _ in range(3)
            ]
            idle, _ = await stack.enter_async_context(raw_socket(server))
            for client in silent:
                assert (await client.wait_closed()).code == CloseCode.AUTH_TIMEOUT
            assert await read_until_closed(idle) == ([], CloseCode.AUTH_TIMEOUT)
    await assert_forgotten(app, baseline)


async def test_cleanup_e2e_slow_consumer_closed_4000_reader_gets_everything(
    server_factory: ServerFactory,
) -> None:
    server = await start(
        server_factory,
        outbox_size=8,
        slow_consumer_timeout=0.5,
        rate_limit=100_000,
        rate_burst=100_000,
    )
    app = server.app
    baseline = await idle_task_count()
    value = "v" * 10 * 1024
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            reader = await stack.enter_async_context(
                open_client(server.url, token=server.token(device="reader"))
            )
            stalled, _ = await stack.enter_async_context(raw_socket(server, receive_buffer=4096))
            await raw_authenticate(stalled, server.token(device="stalled"))
            flooder = await stack.enter_async_context(
                open_client(server.url, token=server.token(device="flooder"))
            )
            stalled_conn = server_side(app, "stalled")

            sent = 0
            while stalled_conn.close_code is None:  # the stalled device never reads
                assert sent < 5000, "the stalled device was never closed"
                sent += 1
                await flooder.update(f"k{sent % 7}", f"{sent}:{value}")
            assert stalled_conn.close_code == CloseCode.SLOW_CONSUMER
            assert app.hub.slow_consumers_closed == 1

            # Its device left the session for everybody else while it still holds the socket.
            left = await reader.wait_for(MessageType.DEVICE_LEFT)
            assert left["payload"]["device_id"] == "stalled"
            assert stalled_conn.outbox not in app.hub.outboxes("s1")
            assert app.hub.subscriber_count == 2
            # (hypercorn cannot cancel its write to a socket that is not read, so the
            # connection itself stays in app.connections until the device reads.)

            # When it finally reads, it gets what was queued and then the 4000 close.
            messages, code = await read_until_closed(stalled)
            assert code == CloseCode.SLOW_CONSUMER
            versions = [
                m["payload"]["version"] for m in messages if m["type"] == MessageType.STATE_UPDATE
            ]
            assert versions == list(range(1, len(versions) + 1))
            assert len(versions) < sent

            # The reading device got every update, in order.
            for version in range(1, sent + 1):
                push = await reader.wait_for(MessageType.STATE_UPDATE)
                assert push["payload"]["version"] == version
                assert push["payload"]["value"] == f"{version}:{value}"
            assert reader.closed is None
    await assert_forgotten(app, baseline)
