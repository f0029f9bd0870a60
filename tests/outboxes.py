"""An outbox on a trio memory channel: the hub's view of a connection, for hub and
store tests that need no socket."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio

__all__ = ["ChannelOutbox"]


class ChannelOutbox:
    """A bounded outbox whose frames a test reads from the channel's other end."""

    def __init__(
        self,
        channel: trio.MemorySendChannel[str],
        *,
        on_slow: Callable[[], None],
        label: str = "",
    ) -> None:
        self._channel = channel
        self._on_slow = on_slow
        self.label = label

    def offer(self, frame: str) -> bool:
        try:
            self._channel.send_nowait(frame)
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        return True

    async def wait_send(self, frame: str) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._channel.send(frame)

    @property
    def depth(self) -> int:
        return self._channel.statistics().current_buffer_used

    def close_slow(self) -> None:
        self._on_slow()
