"""Backends: the store, presence and broker a process runs on, chosen by the settings.

``memory``: everything in this process (the default; one process only).
``redis``: state, presence and events in Redis, shared by every process.
"""

from __future__ import annotations

from typing import Protocol

import trio

from syncbridge.broker import Broker, LocalBroker
from syncbridge.hub import Hub
from syncbridge.metrics import Metrics
from syncbridge.presence import MemoryPresence, Presence, PresenceStore
from syncbridge.settings import Settings
from syncbridge.store.base import Store
from syncbridge.store.memory import MemoryStore

__all__ = ["Backend", "MemoryBackend", "create_backend"]


class Backend(Protocol):
    """What the app needs to run sessions."""

    @property
    def store(self) -> Store:
        """Session state."""
        ...

    @property
    def presence(self) -> PresenceStore:
        """Devices online."""
        ...

    @property
    def broker(self) -> Broker:
        """Event delivery."""
        ...

    @property
    def description(self) -> str:
        """For the start-up line and /health."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every connection and background task of the backend until cancelled."""
        ...


class MemoryBackend:
    """The embedded backend: state lives and dies with this process."""

    description = "memory"

    def __init__(self, settings: Settings, hub: Hub, *, store: Store | None = None) -> None:
        self.store: Store = store or MemoryStore(
            session_ttl=settings.session_ttl,
            history_size=settings.history_size,
            history_max_bytes=settings.history_max_bytes,
            max_state_bytes=settings.max_state_bytes,
            max_keys=settings.max_keys,
        )
        self.presence: PresenceStore = MemoryPresence(
            Presence(max_devices_per_session=settings.max_devices_per_session)
        )
        self.broker: Broker = LocalBroker(hub)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the store's expiry sweep."""
        await self.store.run(task_status=task_status)


def create_backend(settings: Settings, hub: Hub, *, metrics: Metrics | None = None) -> Backend:
    """The backend the settings select: Redis when REDIS_URL/REDIS_ADDR is set."""
    if settings.uses_redis:
        from syncbridge.redis.backend import RedisBackend

        return RedisBackend(settings, hub, metrics=metrics)
    return MemoryBackend(settings, hub)
