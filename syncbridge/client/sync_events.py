"""The bounded event stream of a synchronised client.

The mirror is always right; events are how the application hears about it. If
the application reads them slower than they come, the buffer does not grow
without bound: by default the pending events collapse into one ``Resynced``
(reason ``overflow``) carrying the current state, so nothing is lost that the
application needs. With ``wait=True`` the client instead stops reading until
there is room -- and the server closes a reader that stays that slow (4000,
slow consumer), after which the client resumes by version.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Protocol

import trio

from syncbridge.client.mirror import Event, Mirror, Resynced

__all__ = ["EventBuffer"]


class _Failing(Protocol):
    failure: BaseException | None


class EventBuffer:
    """Events in order, at most ``max_events`` of them."""

    def __init__(self, mirror: Mirror, *, max_events: int, wait: bool) -> None:
        self._mirror = mirror
        self._events: collections.deque[Event] = collections.deque()
        self._max = max_events
        self._wait = wait
        self._arrived = trio.Event()
        self._room = trio.Event()
        self._closed = False

    async def emit(self, events: list[Event]) -> None:
        """Add events (in order), after every one of which the mirror is already current."""
        if not events:
            return
        for event in events:
            while self._wait and len(self._events) >= self._max and not self._closed:
                await self._room.wait()
            if len(self._events) >= self._max:
                # The mirror already includes this and every later event of the
                # batch: one Resynced with its state replaces them all.
                self._events.clear()
                self._events.append(
                    Resynced(
                        state=dict(self._mirror.state),
                        version=self._mirror.version,
                        reason="overflow",
                    )
                )
                break
            self._events.append(event)
        self._pulse()

    def close(self) -> None:
        """No more events; readers finish with what is buffered."""
        self._closed = True
        self._pulse()
        self._room.set()

    async def changed(self) -> None:
        """Wait for the next emit (or close)."""
        await self._arrived.wait()

    async def iterate(self, owner: _Failing) -> AsyncIterator[Event]:
        while True:
            while not self._events:
                if owner.failure is not None:
                    raise owner.failure
                if self._closed:
                    return
                await self._arrived.wait()
            event = self._events.popleft()
            self._room.set()
            self._room = trio.Event()
            yield event

    def _pulse(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()
