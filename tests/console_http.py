"""HTTP/1.1 over real sockets for the console tests: plain requests and an SSE reader (h11)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import orjson
import trio

__all__ = ["EventStream", "Response", "open_event_stream", "request"]


class Response:
    """Status, headers (lower-case names) and body of one response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


def _target(base: str) -> tuple[str, int]:
    host, _, port = base.removeprefix("http://").rpartition(":")
    return host, int(port)


def _request_event(host: str, method: str, path: str, token: str | None) -> h11.Request:
    headers = [("Host", host), ("Connection", "close")]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    if method == "POST":
        headers.append(("Content-Length", "0"))
    return h11.Request(method=method, target=path, headers=headers)


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


async def request(base: str, path: str, token: str | None = None, method: str = "GET") -> Response:
    """One complete request and its response."""
    host, port = _target(base)
    conn = h11.Connection(h11.CLIENT)
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(conn.send(_request_event(host, method, path, token)) or b"")
        if method == "POST":
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        head = await _next_event(conn, stream)
        body = b""
        while not isinstance(event := await _next_event(conn, stream), h11.EndOfMessage):
            body += bytes(event.data)
    headers = {bytes(k).decode(): bytes(v).decode() for k, v in head.headers}
    return Response(head.status_code, headers, body)


class EventStream:
    """The events of one server-sent-events response, read as they arrive."""

    def __init__(self, conn: h11.Connection, stream: trio.SocketStream, head: Any) -> None:
        self._conn = conn
        self._stream = stream
        self.status: int = head.status_code
        self.headers = {bytes(k).decode(): bytes(v).decode() for k, v in head.headers}
        self._buffer = b""

    async def next(self) -> tuple[str, Any]:
        """The next event's name and decoded data."""
        while b"\n\n" not in self._buffer:
            event = await _next_event(self._conn, self._stream)
            if isinstance(event, h11.EndOfMessage):
                raise EOFError("the stream ended")
            self._buffer += bytes(event.data)
        block, _, self._buffer = self._buffer.partition(b"\n\n")
        name, data = "message", b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data += line[6:]
        return name, orjson.loads(data)

    async def wait_for(self, name: str, predicate: Any = lambda data: True) -> Any:
        """Read until an event called ``name`` whose data satisfies ``predicate``."""
        while True:
            event, data = await self.next()
            if event == name and predicate(data):
                return data


@asynccontextmanager
async def open_event_stream(base: str, path: str, token: str) -> AsyncIterator[EventStream]:
    """Open a feed; closing the context closes the socket (the server sees a disconnect)."""
    host, port = _target(base)
    conn = h11.Connection(h11.CLIENT)
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(conn.send(_request_event(host, "GET", path, token)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        head = await _next_event(conn, stream)
        yield EventStream(conn, stream, head)
