"""A trio stream that first replays the bytes the router already read from it."""

from __future__ import annotations

import trio

__all__ = ["PrefixedStream"]


class PrefixedStream(trio.abc.HalfCloseableStream):
    """``stream`` as if ``prefix`` had not been read from it yet.

    The router reads a request's head to decide between the WebSocket engine and
    hypercorn; hypercorn then gets the connection from its first byte. ``socket``
    is exposed because hypercorn reads the peer and local addresses from it.
    """

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()
