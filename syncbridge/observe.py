"""What the operator console watches: recent session events and per-session update rates.

The service feeds an :class:`Observer` with one call where an update is
accepted and one where a device's connection leaves its session. Everything
is bounded: a ring buffer of the latest events, and per-second update counts
over a short window for at most ``max_sessions`` sessions (the least recently
updated are forgotten first). Recording never awaits and costs a few
dictionary operations, since it runs on every update.

Like ``/metrics``, it describes this process only.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterator
from typing import Final

import attrs
import trio

__all__ = ["CLOSE", "UPDATE", "Event", "Observer", "SessionActivity"]

UPDATE: Final = "update"
CLOSE: Final = "close"


@attrs.frozen(kw_only=True, slots=True)
class Event:
    """One thing that happened in a session: an accepted update or a connection that left."""

    seq: int  # increases by one per recorded event, in this process
    at: float  # Unix seconds
    kind: str  # UPDATE or CLOSE
    session_id: str
    device_id: str
    version: int = 0  # UPDATE: the session's version after it
    key: str = ""  # UPDATE: the state key changed
    code: int | None = None  # CLOSE: the server's close code (None: the client closed)


@attrs.define(kw_only=True, slots=True)
class SessionActivity:
    """Recent updates of one session: counts per second over the window, and its last version."""

    counts: list[int]
    second: int  # the Unix second of the newest bucket
    version: int
    updated_at: float


class Observer:
    """A bounded record of recent session events and update rates."""

    def __init__(
        self,
        *,
        capacity: int = 2000,
        window_seconds: int = 60,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._window = window_seconds
        self._max_sessions = max_sessions
        self._activity: collections.OrderedDict[str, SessionActivity] = collections.OrderedDict()
        self._clock = clock
        self._seq = 0
        self._wakeup: trio.Event | None = None

    @property
    def window_seconds(self) -> int:
        """The span the update rates are averaged over."""
        return self._window

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0: none yet)."""
        return self._seq

    def updated(self, session_id: str, device_id: str, version: int, key: str) -> None:
        """The store accepted an update of ``session_id``; it now has ``version``."""
        now = self._clock()
        self._record(
            Event(
                seq=self._seq + 1,
                at=now,
                kind=UPDATE,
                session_id=session_id,
                device_id=device_id,
                version=version,
                key=key,
            )
        )
        second = math.floor(now)
        activity = self._activity.get(session_id)
        if activity is None:
            activity = self._activity[session_id] = SessionActivity(
                counts=[0] * self._window, second=second, version=version, updated_at=now
            )
            if len(self._activity) > self._max_sessions:
                self._activity.popitem(last=False)
        else:
            self._activity.move_to_end(session_id)
            _advance(activity, second)
        activity.counts[second % self._window] += 1
        activity.version = max(activity.version, version)
        activity.updated_at = now

    def closed(self, session_id: str, device_id: str, code: int | None) -> None:
        """A connection of ``device_id`` left ``session_id``, closed by the server with
        ``code`` (None when the client closed it)."""
        self._record(
            Event(
                seq=self._seq + 1,
                at=self._clock(),
                kind=CLOSE,
                session_id=session_id,
                device_id=device_id,
                code=None if code is None else int(code),
            )
        )

    def _record(self, event: Event) -> None:
        self._seq = event.seq
        self._events.append(event)
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()

    async def wait_event(self, after: int) -> None:
        """Block until an event newer than sequence number ``after`` is recorded
        (at once if there is one already; callers bound the wait)."""
        if self._seq > after:
            await trio.lowlevel.checkpoint()
            return
        if self._wakeup is None:
            self._wakeup = trio.Event()
        await self._wakeup.wait()

    def events(
        self, *, after: int = 0, session_id: str | None = None, kind: str | None = None
    ) -> Iterator[Event]:
        """Recorded events newer than sequence number ``after``, oldest first."""
        for event in self._events:
            if (
                event.seq > after
                and (session_id is None or event.session_id == session_id)
                and (kind is None or event.kind == kind)
            ):
                yield event

    def rate(self, session_id: str) -> float:
        """Updates per second of a session, averaged over the window."""
        activity = self._activity.get(session_id)
        if activity is None:
            return 0.0
        _advance(activity, math.floor(self._clock()))
        return sum(activity.counts) / self._window

    def last_version(self, session_id: str) -> int | None:
        """The newest version an update here gave the session (None: none recorded)."""
        activity = self._activity.get(session_id)
        return None if activity is None else activity.version

    def hottest(self, limit: int) -> list[tuple[str, float]]:
        """The sessions with the most updates over the window, with their rates."""
        now = math.floor(self._clock())
        ranked: list[tuple[str, float]] = []
        for session_id, activity in self._activity.items():
            _advance(activity, now)
            total = sum(activity.counts)
            if total:
                ranked.append((session_id, total / self._window))
        ranked.sort(key=lambda item: item[1], reverse=True)
        return ranked[:limit]


def _advance(activity: SessionActivity, second: int) -> None:
    """Zero the buckets of the seconds between the newest one and ``second``."""
    window = len(activity.counts)
    gap = second - activity.second
    if gap <= 0:
        return
    for s in range(activity.second + 1, activity.second + 1 + min(gap, window)):
        activity.counts[s % window] = 0
    activity.second = second
