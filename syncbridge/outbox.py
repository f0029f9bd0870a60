"""A connection's outbox: frames go straight to its socket, queued only when it is behind.

The hub offers every frame here. When the socket has nothing queued, the frame
is written at once by the offering task (no writer wake-up per message: the
architecture brief's measured 5-8x per core); otherwise it joins the queue the
writer task drains. The queue is bounded in frames (``OUTBOX_SIZE``) and bytes
(``OUTBOX_BYTES``): a full outbox refuses the offer, and the hub's slow-consumer
rule takes over (wait under one deadline, then close 4000).
"""

from __future__ import annotations

from collections.abc import Callable

from syncbridge.transport import Transport

__all__ = ["SocketOutbox"]


class SocketOutbox:
    """The bounded outbox of one connection, on its :class:`Transport`."""

    __slots__ = ("_max_bytes", "_max_frames", "_on_sent", "_on_slow", "_transport", "label")

    def __init__(
        self,
        transport: Transport,
        *,
        max_frames: int,
        max_bytes: int,
        on_slow: Callable[[], None],
        on_sent: Callable[[str], None],
        label: str = "",
    ) -> None:
        self._transport = transport
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._on_slow = on_slow
        self._on_sent = on_sent
        self.label = label

    def offer(self, frame: str) -> bool:
        """Send or queue ``frame`` if there is room now; False if the outbox is full.

        A closing connection swallows the frame: that device resumes by version.
        """
        transport = self._transport
        if not transport.open:
            return True
        data = frame.encode()
        queued = transport.queued_frames
        # One frame always fits an empty queue, however large (a big snapshot).
        if queued and (
            queued >= self._max_frames or transport.queued_bytes + len(data) > self._max_bytes
        ):
            return False
        transport.send_text(data)
        self._on_sent(frame)
        return True

    async def wait_send(self, frame: str) -> None:
        """Send or queue ``frame``, waiting for room (the caller bounds the wait)."""
        while not self.offer(frame):
            await self._transport.wait_room()

    @property
    def depth(self) -> int:
        """Frames queued and not yet taken by the kernel."""
        return self._transport.queued_frames

    def close_slow(self) -> None:
        """Close the owning connection as a slow consumer."""
        self._on_slow()
