"""Baseline: the broadcast a Python team would write with python-socketio under uvicorn.

``socketio.AsyncServer(async_mode="asgi")`` wrapped in ``socketio.ASGIApp`` and served
by ``uvicorn.run`` with its defaults (one process; ``loop``/``http``/``ws`` "auto", so
asyncio + h11 + websockets' sans-IO protocol unless uvloop or httptools are
installed), only logging turned down (as SyncBridge runs with LOG_LEVEL=warning and
the hypercorn baseline without an access log) and a bounded graceful shutdown.
python-socketio keeps its defaults too (stdlib json, a task per event, Engine.IO
pings every 25 s).

One room per session. The client joins in the namespace connect packet
(``40{"room": "s1"}``, Socket.IO's ``auth`` payload), answered ``40{"sid": …}``: the
one round trip after the WebSocket handshake, like the other baselines'
``{"room": …}`` → ``{"type": 8}``. A device's ``update`` event is emitted to the other
members of its room (``skip_sid`` = the sender) with its data unchanged (the load
generator's StateUpdate, which carries the send time), no ack.

    python bench/baselines/socketio_broadcast.py --port 9003
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi")
app = socketio.ASGIApp(sio)
room_of: dict[str, str] = {}


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
    room = auth.get("room") if isinstance(auth, dict) else None
    if not isinstance(room, str):
        return False  # refused: the client gets a CONNECT_ERROR (44)
    room_of[sid] = room
    await sio.enter_room(sid, room)
    return True


@sio.event
async def update(sid: str, data: Any) -> None:
    room = room_of.get(sid)
    if room is not None:
        await sio.emit("update", data, to=room, skip_sid=sid)


@sio.event
async def disconnect(sid: str, reason: Any = None) -> None:
    room_of.pop(sid, None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=parser.parse_args().port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
