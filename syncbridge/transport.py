"""What a connection needs of its WebSocket: the engine's socket, or a test's fake."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Transport"]


class Transport(Protocol):
    """One open WebSocket (see :class:`syncbridge.ws.socket.WebSocket`)."""

    #: trio time of the last frame received (any frame is a sign of life).
    last_activity: float
    #: The peer's close code once its close frame arrived.
    peer_close_code: int | None
    peer_close_reason: str
    #: Bytes written by us and not yet taken by the kernel.
    queued_bytes: int

    @property
    def open(self) -> bool:
        """True until a close frame was sent or received, or the socket broke."""
        ...

    @property
    def queued_frames(self) -> int:
        """Frames written by us and not yet taken by the kernel."""
        ...

    @property
    def sent_close_code(self) -> int | None:
        """The code of the close frame sent (by us or by the protocol on bad input)."""
        ...

    @property
    def sent_close_reason(self) -> str:
        """The reason of the close frame sent."""
        ...

    def send_text(self, payload: bytes) -> None:
        """Send a text message now, or queue it for the writer; never blocks."""
        ...

    def send_ping(self) -> None:
        """Send a ping (its pong is a sign of life, like any frame)."""
        ...

    def send_close(self, code: int, reason: str) -> None:
        """Start the closing handshake."""
        ...

    async def receive(self) -> str | bytes | None:
        """The next message; None once the WebSocket is closed."""
        ...

    async def write_queued(self) -> None:
        """Write queued data as the socket allows, until the socket breaks."""
        ...

    async def wait_room(self) -> None:
        """Wait until some queued data has been written."""
        ...

    async def wait_flushed(self) -> None:
        """Write out everything queued."""
        ...

    async def wait_peer_closed(self) -> None:
        """Discard input until the peer's close frame or end of stream."""
        ...

    def release(self) -> None:
        """Close the socket (idempotent)."""
        ...
