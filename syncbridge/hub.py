"""This process's registry of session subscribers, and fan-out with bounded backpressure.

Fan-out first hands a frame to every outbox with room (``send_nowait``), then
awaits room for the full ones under a single deadline, so fast devices never
wait for slow ones while the producer still feels the pressure. An outbox still
full at the deadline is closed as a slow consumer (close code 4000): its device
reconnects and resumes by version, so no message disappears without a trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from typing import Protocol

import trio

__all__ = ["Hub", "Outbox"]

log = logging.getLogger(__name__)


class Outbox(Protocol):
    """A connection's bounded queue of encoded frames, as the hub sees it."""

    label: str

    def offer(self, frame: str) -> bool:
        """Take ``frame`` if there is room now; False if the outbox is full.

        A closed outbox (its connection is going away) swallows the frame:
        that device resumes by version when it reconnects.
        """
        ...

    async def wait_send(self, frame: str) -> None:
        """Take ``frame``, waiting for room (the caller bounds the wait)."""
        ...

    @property
    def depth(self) -> int:
        """Frames queued and not yet written."""
        ...

    def close_slow(self) -> None:
        """Close the owning connection as a slow consumer."""
        ...


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

    def __init__(
        self,
        *,
        slow_consumer_timeout: float,
        on_slow_consumers: Callable[[int], None] | None = None,
    ) -> None:
        # session id -> connection key -> (device id, outbox)
        self._sessions: dict[str, dict[int, tuple[str, Outbox]]] = {}
        self._timeout = slow_consumer_timeout
        self._on_slow = on_slow_consumers
        self._slow_consumers_closed = 0

    @property
    def slow_consumers_closed(self) -> int:
        """Connections this hub closed as slow consumers."""
        return self._slow_consumers_closed

    def _count_slow(self, closed: int) -> None:
        if closed:
            self._slow_consumers_closed += closed
            if self._on_slow is not None:
                self._on_slow(closed)

    def subscribe(self, session_id: str, key: int, outbox: Outbox, *, device_id: str = "") -> bool:
        """Add a connection (``key`` unique per connection) to a session's fan-out.

        Returns True when it is the session's first connection in this process.
        """
        subscribers = self._sessions.setdefault(session_id, {})
        subscribers[key] = (device_id, outbox)
        return len(subscribers) == 1

    def unsubscribe(self, session_id: str, key: int) -> bool:
        """Remove a connection; True when it was the session's last one here."""
        subscribers = self._sessions.get(session_id)
        if subscribers is None or subscribers.pop(key, None) is None:
            return False
        if subscribers:
            return False
        del self._sessions[session_id]
        return True

    def device_connections(self, session_id: str, device_id: str) -> int:
        """How many of this process's connections to ``session_id`` are ``device_id``'s."""
        subscribers = self._sessions.get(session_id)
        if not subscribers:
            return 0
        return sum(1 for device, _box in subscribers.values() if device == device_id)

    def outboxes(
        self,
        session_id: str,
        *,
        exclude: Collection[int] = (),
        exclude_device: str | None = None,
    ) -> list[Outbox]:
        """A session's outboxes, except connections keyed in ``exclude`` and every
        connection of ``exclude_device``."""
        subscribers = self._sessions.get(session_id)
        if not subscribers:
            return []
        return [
            box
            for key, (device, box) in subscribers.items()
            if key not in exclude and (exclude_device is None or device != exclude_device)
        ]

    async def publish(
        self,
        session_id: str,
        frame: str,
        *,
        exclude: Collection[int] = (),
        exclude_device: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Fan ``frame`` out to a session's connections (see :meth:`outboxes`).

        ``timeout`` shortens the wait for full outboxes (clean-up has its own bound).
        """
        targets = self.outboxes(session_id, exclude=exclude, exclude_device=exclude_device)
        if targets:
            wait = self._timeout if timeout is None else min(timeout, self._timeout)
            self._count_slow(await deliver(targets, frame, timeout=wait))

    def close_session(self, session_id: str) -> int:
        """Close every local connection of a session as a slow consumer (they resync)."""
        boxes = self.outboxes(session_id)
        for box in boxes:
            box.close_slow()
        self._count_slow(len(boxes))
        return len(boxes)

    async def send(self, outbox: Outbox, frame: str) -> None:
        """Send one reply with the same slow-consumer rule as fan-out."""
        self._count_slow(await deliver([outbox], frame, timeout=self._timeout))

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
