"""A peer that stops reading: closed as a slow consumer, and it cannot hold a shutdown.

Its close frame cannot be written (its buffers are full), so the connection's
closing handshake is bounded by CLEANUP_TIMEOUT, and a shutdown past
SHUTDOWN_TIMEOUT aborts whatever is left; the kernel's TCP_USER_TIMEOUT
(SEND_STALL_TIMEOUT) is a last bound below both.
"""

from __future__ import annotations

from typing import Any

import orjson
import trio

from syncbridge.client import open_client
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer
from .test_cleanup_e2e import raw_authenticate, raw_socket, server_side
from .test_engine_e2e import raw_request

VALUE = "x" * 16_384
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_stalled_peer_closed_4000_and_shutdown_completes_within_its_timeout(
    server_factory: Any,
) -> None:
    server: RunningServer = await server_factory(
        send_stall_timeout=30.0,  # the kernel's bound is not what ends it here
        outbox_size=4,
        slow_consumer_timeout=0.2,
        cleanup_timeout=30.0,  # a clean-up that would wait "for ever" ...
        shutdown_timeout=1.0,  # ... is cut off by the shutdown deadline
    )
    app = server.app
    with trio.fail_after(10):
        async with raw_socket(server, receive_buffer=4096) as (ws, _stream):
            await raw_authenticate(ws, server.token(device="stalled"))
            stalled = server_side(app, "stalled")
            async with open_client(server.url, token=server.token(device="writer")) as writer:
                # Fill the stalled peer's socket buffers, then its outbox: it is
                # closed as a slow consumer, but its close frame cannot be written.
                while stalled.close_code is None:
                    await writer.update("k", VALUE)
                assert stalled.close_code == CloseCode.SLOW_CONSUMER
                assert stalled.key in app.connections  # stuck in its closing handshake
                await writer.wait_for(MessageType.DEVICE_LEFT)  # left the session at once
                started = trio.current_time()
                server.stop.set()
                closed = await writer.wait_closed()
                assert closed.code == CloseCode.GOING_AWAY
                # Draining (the stalled peer holds it): new handshakes are refused
                # with a readable 503, and /health says so.
                status, body = await raw_request(server, HANDSHAKE)
                assert (status, orjson.loads(body)) == (
                    503,
                    {"error": "server is shutting down; reconnect shortly"},
                )
                _status, health = await raw_request(
                    server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert orjson.loads(health)["status"] == "draining"
                assert not server.stopped.is_set()
                await server.stopped.wait()
                took = trio.current_time() - started
            assert stalled.key not in app.connections
            assert app.hub.session_count == 0
    # SHUTDOWN_TIMEOUT, then the abort; never the 30 s clean-up or stall timeout.
    assert 1.0 <= took < 1.0 + 3.0
