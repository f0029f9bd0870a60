"""Per-session write locks shared by every writer in this process (WebSocket and HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["SessionLocks"]


class SessionLocks:
    """One writer at a time per session, in arrival order (trio.Lock is fair).

    Versions are then fanned out in the order the store assigned them, and a
    full outbox holds back later versions instead of being overtaken by them.
    A lock exists only while someone holds or waits for it.
    """

    def __init__(self) -> None:
        self._locks: dict[str, trio.Lock] = {}

    @asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        """Hold the session's lock for the block."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = trio.Lock()
        try:
            async with lock:
                yield
        finally:
            stats = lock.statistics()
            if not stats.locked and not stats.tasks_waiting and self._locks.get(session_id) is lock:
                del self._locks[session_id]
