"""Baseline: the same minimal broadcast on trio-websocket's ``serve_websocket``.

First message ``{"room": "s1"}`` → ``{"type": 8}``; later messages go verbatim to
the room's other members, awaited one after another.

    python bench/baselines/trio_websocket_broadcast.py --port 9002
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, serve_websocket

JOINED = orjson.dumps({"type": 8}).decode()
rooms: dict[str, set[Any]] = {}


async def handler(request: Any) -> None:
    ws = await request.accept()
    members: set[Any] | None = None
    try:
        first = await ws.get_message()
        members = rooms.setdefault(orjson.loads(first)["room"], set())
        members.add(ws)
        await ws.send_message(JOINED)
        while True:
            message = await ws.get_message()
            for member in list(members):
                if member is not ws:
                    try:
                        await member.send_message(message)
                    except ConnectionClosed:
                        members.discard(member)
    except ConnectionClosed:
        pass
    finally:
        if members is not None:
            members.discard(ws)


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_websocket(
                handler, "127.0.0.1", port, ssl_context=None, max_message_size=512 * 1024
            )
        )
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    trio.run(main, parser.parse_args().port)
