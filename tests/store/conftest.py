"""Backends under test: the same contract against memory, one Redis and a Redis Cluster.

``backend`` is parametrized over :data:`KINDS` (memory and a private redis-server);
a test decorated with :data:`every_backend` also runs against a 3-master cluster,
which takes a couple of seconds to form, so only tests where the cluster matters
(hash tags, sharded pub/sub) opt in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import coredis
import orjson
import pytest
import trio

from syncbridge.backend import Backend, MemoryBackend
from syncbridge.hub import Hub
from syncbridge.redis.backend import RedisBackend
from syncbridge.redis.connection import Keys
from syncbridge.settings import Settings
from tests.conftest import make_settings
from tests.redis_harness import RedisCluster, RedisServer, open_redis_cluster, open_redis_server

from ..outboxes import ChannelOutbox

KINDS = ("memory", "redis")
every_backend = pytest.mark.parametrize("backend", [*KINDS, "cluster"], indirect=True)
redis_kinds = pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
redis_only = pytest.mark.parametrize("backend", ["redis"], indirect=True)

WAIT = 10.0  # bound on any wait for Redis in these tests


@attrs.define(eq=False)
class Bench:
    """One running backend (one "process"), its hub, and the Redis it talks to."""

    kind: str
    backend: Backend
    hub: Hub
    settings: Settings
    redis: RedisServer | RedisCluster | None
    _nursery: trio.Nursery
    _scope: trio.CancelScope
    _done: trio.Event

    @property
    def store(self) -> Any:
        return self.backend.store

    @property
    def presence(self) -> Any:
        return self.backend.presence

    @property
    def broker(self) -> Any:
        return self.backend.broker

    async def another(self, *, slow_consumer_timeout: float = 5.0, **overrides: Any) -> Bench:
        """A second backend with ``overrides``: for Redis another process on the same
        server; for memory a fresh store (memory shares nothing between instances)."""
        settings = attrs.evolve(self.settings, **overrides)
        return await start_bench(
            self._nursery, self.kind, settings, self.redis, slow_consumer_timeout
        )

    async def stop(self) -> None:
        """Cancel this backend (a process that dies) and wait until it has closed."""
        self._scope.cancel()
        with trio.fail_after(WAIT):
            await self._done.wait()


async def _serve(backend: Backend, done: trio.Event, *, task_status: Any) -> None:
    try:
        async with trio.open_nursery() as inner:
            await inner.start(backend.run)
            task_status.started(inner.cancel_scope)
    finally:
        done.set()


async def start_bench(
    nursery: trio.Nursery,
    kind: str,
    settings: Settings,
    redis: RedisServer | RedisCluster | None,
    slow_consumer_timeout: float = 5.0,
) -> Bench:
    hub = Hub(slow_consumer_timeout=slow_consumer_timeout)
    backend: Backend = (
        MemoryBackend(settings, hub) if kind == "memory" else RedisBackend(settings, hub)
    )
    done = trio.Event()
    with trio.fail_after(WAIT):
        scope = await nursery.start(_serve, backend, done)
    return Bench(kind, backend, hub, settings, redis, nursery, scope, done)


def settings_for(kind: str, redis: RedisServer | RedisCluster | None, **overrides: Any) -> Settings:
    """Settings of a backend of ``kind`` on ``redis``."""
    if redis is None:
        return make_settings(**overrides)
    return make_settings(redis_url=redis.url, redis_cluster=kind == "cluster", **overrides)


@contextlib.asynccontextmanager
async def open_redis(
    kind: str, directory: Path
) -> AsyncIterator[RedisServer | RedisCluster | None]:
    if kind == "memory":
        yield None
    elif kind == "redis":
        async with open_redis_server(directory / "redis") as server:
            yield server
    else:
        async with open_redis_cluster(directory / "cluster") as cluster:
            yield cluster


@pytest.fixture(params=KINDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bench]:
    """A started backend of the parametrized kind; everything stops at teardown."""
    kind: str = request.param
    async with open_redis(kind, tmp_path) as redis, trio.open_nursery() as nursery:
        yield await start_bench(nursery, kind, settings_for(kind, redis), redis)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def redis_bench(redis_server: RedisServer, nursery: trio.Nursery) -> Bench:
    """A RedisBackend on a private server, settings tuned for operator-visible checks."""
    settings = settings_for("redis", redis_server, session_ttl=100.0, store_timeout=0.5)
    return await start_bench(nursery, "redis", settings, redis_server)


# ----------------------------------------------------------------------------- helpers


@attrs.define(eq=False)
class Receiver:
    """A connection's outbox as the hub sees it, and what its writer would take out."""

    outbox: ChannelOutbox
    frames: trio.MemoryReceiveChannel[str]
    slow: trio.Event = attrs.field(factory=trio.Event)

    async def next(self) -> str:
        with trio.fail_after(WAIT):
            return await self.frames.receive()

    def pending(self) -> list[str]:
        """Frames queued right now (taken out of the outbox)."""
        out = []
        while True:
            try:
                out.append(self.frames.receive_nowait())
            except trio.WouldBlock:
                return out


def connect_receiver(
    hub: Hub, session_id: str, key: int, *, device_id: str = "d", size: int = 1000
) -> Receiver:
    """Subscribe a real Outbox (a trio memory channel) to ``session_id`` in ``hub``."""
    send, receive = trio.open_memory_channel[str](size)
    slow = trio.Event()
    outbox = ChannelOutbox(send, on_slow=slow.set, label=f"{session_id}/{key}")
    hub.subscribe(session_id, key, outbox, device_id=device_id)
    return Receiver(outbox, receive, slow)


@attrs.define(eq=False)
class ChannelTap:
    """A plain (S)SUBSCRIBE on a session's channel, as any Redis client would do it."""

    pubsub: Any

    async def next(self) -> tuple[list[Any], str]:
        """The next message split into its routing header and its frame."""
        with trio.fail_after(WAIT):
            while True:
                message = await self.pubsub.get_message()
                if message is not None and message["type"] in ("message", "smessage"):
                    header, _, frame = message["data"].decode().partition("\n")
                    return orjson.loads(header), frame


@contextlib.asynccontextmanager
async def tap_channel(bench: Bench, session_id: str) -> AsyncIterator[ChannelTap]:
    """Subscribe (confirmed) to the session's events channel on ``bench``'s Redis."""
    assert bench.redis is not None
    channel = Keys(session_id).channel
    client: Any
    if isinstance(bench.redis, RedisCluster):
        client = coredis.RedisCluster.from_url(bench.redis.url)
        async with client, client.sharded_pubsub(channels=[channel]) as pubsub:
            yield ChannelTap(pubsub)
    else:
        client = coredis.Redis.from_url(bench.redis.url)
        async with client, client.pubsub(channels=[channel]) as pubsub:
            yield ChannelTap(pubsub)
