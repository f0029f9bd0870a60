"""A peer that stops reading is cut off by the kernel (TCP_USER_TIMEOUT), not held forever.

hypercorn shields its socket writes from cancellation, so without the option a
device that keeps its TCP connection open but never reads would keep its
handler task, its socket and any graceful shutdown waiting indefinitely.
"""

from __future__ import annotations

from typing import Any

import trio

from syncbridge.client import open_client

from ..conftest import RunningServer
from .test_cleanup_e2e import raw_authenticate, raw_socket, server_side

VALUE = "x" * 16_384


async def test_stalled_peer_is_aborted_and_shutdown_completes(server_factory: Any) -> None:
    server: RunningServer = await server_factory(
        send_stall_timeout=1.0,
        outbox_size=4,
        slow_consumer_timeout=0.2,
        ping_interval=0.05,
        shutdown_timeout=1.0,
    )
    app = server.app
    with trio.fail_after(6):
        async with raw_socket(server, receive_buffer=4096) as (ws, _stream):
            await raw_authenticate(ws, server.token(device="stalled"))
            stalled = server_side(app, "stalled")
            async with open_client(server.url, token=server.token(device="writer")) as writer:
                # Fill the stalled peer's socket buffers, then its outbox; it is
                # closed as a slow consumer, but its close frame cannot be written.
                while stalled.key in app.connections and stalled.close_code is None:
                    await writer.update("k", VALUE)
            # The test still holds the socket open without reading: only the
            # kernel's send timeout can end the server's side of it.
            await app.wait_no_connections()
            assert stalled.key not in app.connections
            assert app.hub.session_count == 0
