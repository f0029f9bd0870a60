"""This process's registry of session subscribers, and fan-out with bounded backpressure.

Fan-out first hands a frame to every outbox with room (``send_nowait``), then
awaits room for the full ones under a single deadline, so fast devices never
wait for slow ones while the producer still feels the pressure. An outbox still
full at the deadline is closed as a slow consumer (close code 4000): its device
reconnects and resumes by version, so no message disappears without a trace.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator

import trio

__all__ = ["Hub", "Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    """The bounded queue of encoded frames waiting for one connection's writer."""

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
        """Queue ``frame`` if there is room now; False if the outbox is full.

        A closed outbox (its connection is going away) swallows the frame:
        that device resumes by version when it reconnects.
        """
        try:
            self._channel.send_nowait(frame)
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        return True

    async def wait_send(self, frame: str) -> None:
        """Queue ``frame``, waiting for room (the caller bounds the wait)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._channel.send(frame)

    @property
    def depth(self) -> int:
        """Frames queued and not yet taken by the writer."""
        return self._channel.statistics().current_buffer_used

    def close_slow(self) -> None:
        """Close the owning connection as a slow consumer."""
        self._on_slow()


async def deliver(outboxes: list[Outbox], frame: str, *, timeout: float) -> int:
    """Hand ``frame`` to every outbox; close those still full after ``timeout``.

    Returns how many outboxes were closed as slow consumers.
    """
    full = [box for box in outboxes if not box.offer(frame)]
    if not full:
        return 0
    with trio.move_on_after(timeout):
        while full:
            await full[0].wait_send(frame)
            full.pop(0)
    # A receiver may have drained while we waited on another: last chance.
    full = [box for box in full if not box.offer(frame)]
    for box in full:
        log.warning("slow consumer %s: outbox still full after %.1fs", box.label, timeout)
        box.close_slow()
    return len(full)


class Hub:
    """Session id -> the outboxes of this process's connections to that session."""

    def __init__(self, *, slow_consumer_timeout: float) -> None:
        self._sessions: dict[str, dict[int, Outbox]] = {}
        self._timeout = slow_consumer_timeout
        self.slow_consumers_closed = 0

    def subscribe(self, session_id: str, key: int, outbox: Outbox) -> None:
        """Add a connection (``key`` unique per connection) to a session's fan-out."""
        self._sessions.setdefault(session_id, {})[key] = outbox

    def unsubscribe(self, session_id: str, key: int) -> None:
        """Remove a connection; forget the session when its last one leaves."""
        subscribers = self._sessions.get(session_id)
        if subscribers is None:
            return
        subscribers.pop(key, None)
        if not subscribers:
            del self._sessions[session_id]

    def outboxes(self, session_id: str, *, exclude: Collection[int] = ()) -> list[Outbox]:
        """The outboxes of a session's connections, except those keyed in ``exclude``."""
        subscribers = self._sessions.get(session_id)
        if not subscribers:
            return []
        return [box for key, box in subscribers.items() if key not in exclude]

    async def publish(
        self,
        session_id: str,
        frame: str,
        *,
        exclude: Collection[int] = (),
        timeout: float | None = None,
    ) -> None:
        """Fan ``frame`` out to a session's connections except those in ``exclude``.

        ``timeout`` shortens the wait for full outboxes (clean-up has its own bound).
        """
        targets = self.outboxes(session_id, exclude=exclude)
        if targets:
            wait = self._timeout if timeout is None else min(timeout, self._timeout)
            self.slow_consumers_closed += await deliver(targets, frame, timeout=wait)

    async def send(self, outbox: Outbox, frame: str) -> None:
        """Send one reply with the same slow-consumer rule as fan-out."""
        self.slow_consumers_closed += await deliver([outbox], frame, timeout=self._timeout)

    @property
    def session_count(self) -> int:
        """Sessions with at least one connection in this process."""
        return len(self._sessions)

    @property
    def subscriber_count(self) -> int:
        """Connections subscribed to some session."""
        return sum(len(s) for s in self._sessions.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self._sessions)
