"""Cost of parsing server frames in the candidate load-generator clients.

    python bench/client_microbench.py

Feeds the same 100 000 server frames (a ~300-byte StateUpdate broadcast, 20
frames per read) to each parser and decodes each message with orjson, as the
load generator does; prints CPU µs per frame:

``raw``         the benchmark's own RFC 6455 frame reader (bench/loadgen.py)
``websockets``  websockets' sans-IO ClientProtocol (C-accelerated unmasking)
``wsproto``     wsproto's FrameProtocol: the engine under trio-websocket (which
                then adds its own trio tasks and channels on top)
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from typing import Any

import orjson

FRAMES = 100_000
PER_READ = 20


def _message() -> bytes:
    return orjson.dumps(
        {
            "type": 5,
            "timestamp": 1767225600,
            "payload": {
                "key": "k",
                "value": {"t": 123456789012345, "s": 1, "p": "x" * 110},
                "operation": "SET",
                "version": 12345,
            },
            "session_id": "s100",
            "user_id": "u100",
            "device_id": "d0",
        }
    )


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + struct.pack("!H", n)
    return head + payload


def _chunks() -> list[bytes]:
    chunk = _frame(_message()) * PER_READ
    return [chunk] * (FRAMES // PER_READ)


def _raw(chunks: list[bytes]) -> int:
    from bench.loadgen import RawClient

    count = 0

    class Sink:
        server_closes = 0

        def on_frame(self, _ws: Any, data: bytes) -> None:  # what RawClient calls per frame
            nonlocal count
            orjson.loads(data)["payload"]["value"]["t"]
            count += 1

    client = RawClient.__new__(RawClient)
    client.worker = Sink()  # type: ignore[assignment]
    client.buffer = bytearray()
    client.fragments = []
    client.open = True
    for chunk in chunks:
        client.data_received(chunk)
    return count


def _websockets(chunks: list[bytes]) -> int:
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    proto = ClientProtocol(parse_uri("ws://127.0.0.1:1/ws"), max_size=None)
    request = proto.connect()
    proto.send_request(request)
    proto.data_to_send()
    key = request.headers["Sec-WebSocket-Key"]
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    proto.receive_data(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    list(proto.events_received())
    count = 0
    for chunk in chunks:
        proto.receive_data(chunk)
        for frame in proto.events_received():
            orjson.loads(frame.data)["payload"]["value"]["t"]
            count += 1
        proto.data_to_send()
    return count


def _wsproto(chunks: list[bytes]) -> int:
    from wsproto.frame_protocol import FrameProtocol

    proto = FrameProtocol(client=True, extensions=[])
    count = 0
    for chunk in chunks:
        proto.receive_bytes(chunk)
        for frame in proto.received_frames():
            orjson.loads(frame.payload)["payload"]["value"]["t"]
            count += 1
    return count


def measure() -> dict[str, float]:
    chunks = _chunks()
    result = {}
    for name, parse in (("raw", _raw), ("websockets", _websockets), ("wsproto", _wsproto)):
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            count = parse(chunks)
            best = min(best, (time.process_time() - started) / count * 1e6)
        result[name] = round(best, 2)
    return result


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(json.dumps(measure()))
