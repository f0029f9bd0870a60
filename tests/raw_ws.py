"""A WebSocket client that shows the test every frame, pings and pongs included.

trio-websocket answers pings by itself and never shows them; the engine tests
need to see when pings arrive and to play a peer that does not answer them.
websockets' sans-IO ClientProtocol does the framing; this only moves bytes.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import orjson
import trio
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["RawClient", "open_raw_client"]


class RawClient:
    """One client WebSocket; ``answer_pings`` False plays a peer that never pongs."""

    def __init__(self, stream: trio.SocketStream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.answer_pings = True
        #: trio time of every ping received.
        self.pings: list[float] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._frames: collections.deque[Frame] = collections.deque()
        self.response: Response | None = None

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self.stream.send_all(data)

    async def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self._flush()

    async def send_json(self, message: object) -> None:
        await self.send_text(orjson.dumps(message).decode())

    async def next_frame(self) -> Frame | None:
        """The next data or pong frame; None once closed (close code in ``close_code``)."""
        while not self._frames:
            if self.protocol.state is State.CLOSED:
                return None
            data = await self.stream.receive_some(65536)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            for event in self.protocol.events_received():
                if not isinstance(event, Frame):
                    continue
                if event.opcode is Opcode.PING:
                    self.pings.append(trio.current_time())
                    if not self.answer_pings:
                        # The protocol queued a pong: drop what it wanted to send.
                        self.protocol.data_to_send()
                        continue
                elif event.opcode is Opcode.CLOSE:
                    received = self.protocol.close_rcvd
                    self.close_code = None if received is None else int(received.code)
                    self.close_reason = "" if received is None else received.reason
                    continue
                else:
                    self._frames.append(event)
            await self._flush()
        return self._frames.popleft()

    async def next_message(self) -> dict[str, object] | None:
        """The next JSON message; None once closed."""
        while (frame := await self.next_frame()) is not None:
            if frame.opcode is Opcode.TEXT:
                message: dict[str, object] = orjson.loads(frame.data)
                return message
        return None

    async def wait_closed(self) -> int | None:
        """Read (and drop) everything until the close; its code."""
        while await self.next_frame() is not None:
            pass
        return self.close_code


@asynccontextmanager
async def open_raw_client(
    url: str, *, origin: str | None = None, deflate: bool = False
) -> AsyncIterator[RawClient]:
    """Connect to ``url`` and complete the handshake; the stream is closed on exit."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        protocol = ClientProtocol(
            parse_uri(url),
            origin=origin,  # type: ignore[arg-type]
            extensions=[ClientPerMessageDeflateFactory()] if deflate else None,
        )
        request = protocol.connect()
        protocol.send_request(request)
        client = RawClient(stream, protocol)
        await client._flush()
        while protocol.state is State.CONNECTING:
            data = await stream.receive_some(65536)
            assert data, "closed during the handshake"
            protocol.receive_data(data)
        response = protocol.events_received()[0]
        assert isinstance(response, Response), response
        assert response.status_code == 101, response
        client.response = response
        yield client
