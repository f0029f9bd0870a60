"""Baseline: the smallest broadcast app on SyncBridge's stack (hypercorn trio worker, ASGI).

A client's first message names its room (``{"room": "s1"}``) and is answered with
``{"type": 8}``; every later message is sent verbatim to the room's other members.
No auth, no store, no queues: the sender's task writes to each member in turn.

    python bench/baselines/hypercorn_broadcast.py --port 9000
"""

from __future__ import annotations

import argparse
import itertools
import signal
from typing import Any

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

JOINED = orjson.dumps({"type": 8}).decode()
rooms: dict[str, dict[int, Any]] = {}
ids = itertools.count()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if scope["type"] != "websocket" or (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    me = next(ids)
    members: dict[int, Any] | None = None
    try:
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            text = event.get("text")
            if text is None:
                text = (event.get("bytes") or b"").decode()
            if members is None:
                members = rooms.setdefault(orjson.loads(text)["room"], {})
                members[me] = send
                await send({"type": "websocket.send", "text": JOINED})
                continue
            frame = {"type": "websocket.send", "text": text}
            for key, member_send in list(members.items()):
                if key != me:
                    try:
                        await member_send(frame)
                    except Exception:
                        members.pop(key, None)
    finally:
        if members is not None:
            members.pop(me, None)


async def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.websocket_ping_interval = None
    config.backlog = 1024
    config.graceful_timeout = 1.0

    async def stop() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return

    await serve(app, config, shutdown_trigger=stop, mode="asgi")  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    trio.run(main, parser.parse_args().port)
