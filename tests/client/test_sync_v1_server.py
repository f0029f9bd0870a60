"""Against a plain v1 server (no Resume): the client notices and takes a snapshot instead.

The v1 server here is a small fake on trio-websocket: it answers Auth without a
Resume (ignoring last_version), Heartbeat and SnapshotRequest, as HarmonyFlow v1 did.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from syncbridge.client import Backoff, open_sync_client
from syncbridge.protocol.messages import MessageType

STATE = {"theme": "dark"}


async def _v1_handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    replies = {
        MessageType.AUTH: (
            MessageType.AUTH_SUCCESS,
            {"new_token": "t2", "expires_at": int(time.time()) + 3600, "device_id": "d"},
        ),
        MessageType.HEARTBEAT: (MessageType.HEARTBEAT_ACK, {"server_time": 0}),
        MessageType.SNAPSHOT_REQUEST: (
            MessageType.SNAPSHOT_RESPONSE,
            {"session_id": "s", "state_data": STATE, "version": 7},
        ),
    }
    try:
        while True:
            message: dict[str, Any] = orjson.loads(await ws.get_message())
            kind, payload = replies[message["type"]]
            reply = {"type": kind, "timestamp": int(time.time()), "payload": payload}
            reply["correlation_id"] = message.get("correlation_id")
            await ws.send_message(orjson.dumps(reply).decode())
    except ConnectionClosed:
        pass


async def test_sync_client_against_a_v1_server_falls_back_to_a_snapshot(
    nursery: trio.Nursery,
) -> None:
    serve = partial(serve_websocket, _v1_handler, "127.0.0.1", 0, ssl_context=None)
    server = await nursery.start(serve)
    url = f"ws://127.0.0.1:{server.port}/ws"
    with trio.fail_after(10):
        async with open_sync_client(
            url, token="t1", backoff=Backoff(initial=0.01), heartbeat_interval=None
        ) as client:
            assert (dict(client.state), client.version) == (STATE, 7)
            assert client.token == "t2"
    nursery.cancel_scope.cancel()
