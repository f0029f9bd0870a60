"""Baseline: the same minimal broadcast on ``websockets.trio.server.serve`` (websockets >= 15).

First message ``{"room": "s1"}`` → ``{"type": 8}``; later messages go verbatim to
the room's other members, awaited one after another.

    python bench/baselines/websockets_trio_broadcast.py --port 9001
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

import orjson
import trio
from websockets.trio.server import serve

JOINED = orjson.dumps({"type": 8}).decode()
rooms: dict[str, set[Any]] = {}


async def handler(ws: Any) -> None:
    members: set[Any] | None = None
    try:
        first = await ws.recv()
        members = rooms.setdefault(orjson.loads(first)["room"], set())
        members.add(ws)
        await ws.send(JOINED)
        async for message in ws:
            for member in list(members):
                if member is not ws:
                    try:
                        await member.send(message)
                    except Exception:
                        members.discard(member)
    except Exception:
        pass
    finally:
        if members is not None:
            members.discard(ws)


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(
                handler,
                port,
                host="127.0.0.1",
                backlog=1024,
                compression=None,
                ping_interval=None,
                max_size=512 * 1024,
                task_status=task_status,
            )
        )
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        with trio.move_on_after(2):
            await server.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    trio.run(main, parser.parse_args().port)
