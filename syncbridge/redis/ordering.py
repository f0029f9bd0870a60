"""Acks in version order on Redis: the writer's relay places them at their turn.

On Redis every change reaches local devices through pub/sub, while its writer
learns the new version from the update script's reply, on another connection.
Sent at once, a writer's ack for version 5 could overtake version 4 from another
device, still on its way through the relay. So the ack waits for its place:
the script puts the version into the routing header; when this process's relay
reaches that version, from that connection, it queues the ack into the writer's
outbox there, between 4 and 6, and skips the broadcast for the writer.

The reply and the relayed message race each other: the relay may reach a version
before the service knows it. It then waits (bounded) while an apply from that
connection is still in flight, and gives up on one whose service gave up.
"""

from __future__ import annotations

from collections import Counter

import attrs
import trio

from syncbridge.hub import Hub, Outbox

__all__ = ["AckOrder"]


@attrs.define(eq=False)
class _Ack:
    frame: str
    outbox: Outbox
    placed: trio.Event = attrs.Factory(trio.Event)


class AckOrder:
    """Pending acks of this process's writers, by session and version."""

    def __init__(self, hub: Hub, *, timeout: float) -> None:
        self._hub = hub
        self._timeout = timeout
        self._in_flight: Counter[tuple[str, int]] = Counter()  # (session, connection)
        self._acks: dict[tuple[str, int], _Ack] = {}  # (session, version)
        self._changed: dict[str, trio.Event] = {}

    def ticket(self, session_id: str, origin: int) -> _Ticket:
        """An apply from ``origin`` is about to start."""
        self._in_flight[(session_id, origin)] += 1
        return _Ticket(self, session_id, origin)

    def _settle(self, session_id: str, origin: int) -> None:
        key = (session_id, origin)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
        event = self._changed.pop(session_id, None)
        if event is not None:
            event.set()

    async def place(self, session_id: str, origin: int, version: int) -> None:
        """The relay reached ``version`` from local connection ``origin``: queue its
        ack there (waiting, bounded, for the service to provide it)."""
        key = (session_id, version)
        with trio.move_on_after(self._timeout):
            while (ack := self._acks.pop(key, None)) is None:
                if not self._in_flight[(session_id, origin)]:
                    return  # the service gave up on it (or it was no ack of ours)
                event = self._changed.get(session_id)
                if event is None:
                    event = self._changed[session_id] = trio.Event()
                await event.wait()
            await self._hub.send(ack.outbox, ack.frame)
            ack.placed.set()

    def pending(self) -> int:
        """Acks waiting for their place (tests and /debug)."""
        return len(self._acks) + sum(self._in_flight.values())


@attrs.define(eq=False)
class _Ticket:
    order: AckOrder
    session_id: str
    origin: int
    _done: bool = False

    def abandon(self) -> None:
        if not self._done:
            self._done = True
            self.order._settle(self.session_id, self.origin)

    async def send(self, version: int, frame: str, outbox: Outbox, *, timeout: float) -> bool:
        order = self.order
        ack = _Ack(frame, outbox)
        key = (self.session_id, version)
        order._acks[key] = ack
        self.abandon()  # settled: the relay now finds the ack itself
        with trio.move_on_after(timeout):
            await ack.placed.wait()
        if ack.placed.is_set():
            return True
        order._acks.pop(key, None)
        return False
