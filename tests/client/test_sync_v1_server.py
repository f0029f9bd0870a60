"""Against a plain v1 server (no Resume): the client notices and takes a snapshot instead.

The server here is a small fake on trio-websocket: it answers Auth without a
Resume (ignoring last_version), Heartbeat and SnapshotRequest, as HarmonyFlow v1
did, and refuses every StateUpdate as a server checking ``base_version`` will.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from syncbridge.client import Backoff, ConflictError, open_sync_client
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
        # As a server that checks base_version will refuse a stale update.
        MessageType.STATE_UPDATE: (
            MessageType.ERROR,
            {
                "code": 409,
                "error_code": "CONFLICT",
                "message": "base_version 7 is stale",
                "details": {"value": "light", "version": 8},
            },
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


async def test_sync_client_v1_server_snapshot_fallback_and_409_conflict(
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
            with pytest.raises(ConflictError) as conflict:
                await client.set("theme", "blue")
            assert (conflict.value.server_value, conflict.value.version) == ("light", 8)
    nursery.cancel_scope.cancel()
