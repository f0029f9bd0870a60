"""RedisBackend: one coredis client shared by the store, presence and the broker."""

from __future__ import annotations

import logging

import trio

from syncbridge.errors import StoreUnavailable
from syncbridge.hub import Hub
from syncbridge.metrics import Metrics
from syncbridge.redis.broker import RedisBroker
from syncbridge.redis.connection import connect, describe_target
from syncbridge.redis.presence import RedisPresence
from syncbridge.redis.store import RedisStore
from syncbridge.settings import Settings

__all__ = ["RedisBackend"]

log = logging.getLogger(__name__)


class RedisBackend:
    """State, presence and events in Redis (or a Redis Cluster)."""

    def __init__(self, settings: Settings, hub: Hub, *, metrics: Metrics | None = None) -> None:
        self.client = connect(settings)
        target = describe_target(settings)
        self.description = f"redis ({'cluster ' if settings.redis_cluster else ''}{target})"
        self.broker = RedisBroker(
            self.client,
            hub,
            sharded=settings.redis_cluster,
            timeout=settings.store_timeout,
            on_lag=metrics.pubsub_lag_seconds.observe if metrics is not None else None,
        )
        self.store = RedisStore(
            self.client,
            header=self.broker.header,
            publish_command=self.broker.publish_command,
            session_ttl=settings.session_ttl,
            history_size=settings.history_size,
            history_max_bytes=settings.history_max_bytes,
            max_state_bytes=settings.max_state_bytes,
            max_keys=settings.max_keys,
            timeout=settings.store_timeout,
            target=target,
            batch=not settings.redis_cluster,
        )
        self.presence = RedisPresence(
            self.client,
            process_id=self.broker.process_id,
            header=self.broker.header,
            publish_command=self.broker.publish_command,
            announce=self.broker.publish,
            ttl=settings.presence_ttl,
            max_devices_per_session=settings.max_devices_per_session,
            session_ttl=settings.session_ttl,
            timeout=settings.store_timeout,
            batch=not settings.redis_cluster,
        )
        self._target = target

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the client, start the relay and presence upkeep; reconnects are automatic."""
        async with self.client:
            try:
                latency = await self.store.ping()
            except StoreUnavailable as exc:
                log.warning(
                    "Redis at %s is unreachable (%s); serving degraded until it answers",
                    self._target,
                    exc.message,
                )
            else:
                log.info("Redis at %s answers in %.2f ms", self._target, latency * 1000)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.store.run)
                await nursery.start(self.broker.run)
                await nursery.start(self.presence.run)
                task_status.started()
