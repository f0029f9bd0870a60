"""RedisBroker: session events across processes over Redis pub/sub, to real hub outboxes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from syncbridge.errors import StoreUnavailable
from syncbridge.hub import Hub
from syncbridge.protocol.messages import Operation
from syncbridge.redis.broker import RedisBroker
from syncbridge.redis.connection import Keys, connect
from syncbridge.store.base import Origin

from .conftest import WAIT, Bench, connect_receiver, redis_kinds, redis_only


async def ready(*benches: Bench) -> None:
    """Until each broker's pub/sub connection is up (watching earlier means a resync)."""
    with trio.fail_after(WAIT):
        for bench in benches:
            await bench.broker.connected.wait()


async def subscribers(bench: Bench, session_id: str) -> int:
    """PUBSUB NUMSUB of the session's channel, as an operator would ask."""
    assert bench.redis is not None
    lines = (await bench.redis.cli("PUBSUB", "NUMSUB", Keys(session_id).channel)).split()
    return int(lines[-1])


@redis_only
async def test_redis_broker_watch_returns_once_subscribed(backend: Bench) -> None:
    other = await backend.another()
    await ready(backend, other)
    box = connect_receiver(backend.hub, "w", 1)
    await backend.broker.watch("w")
    assert await subscribers(backend, "w") == 1
    await other.broker.publish("w", "first")  # published by another process, right away
    assert await box.next() == "first"


@redis_kinds
async def test_redis_broker_skips_origin_only_in_its_own_process(backend: Bench) -> None:
    session = "room{7}"
    other = await backend.another()
    await ready(backend, other)
    here_origin = connect_receiver(backend.hub, session, 1, device_id="d1")
    here_peer = connect_receiver(backend.hub, session, 2, device_id="d2")
    there_same_key = connect_receiver(other.hub, session, 1, device_id="d3")
    await backend.broker.watch(session)
    await other.broker.watch(session)

    await backend.broker.publish(session, "from-1", origin=1)
    assert await here_peer.next() == "from-1"
    assert await there_same_key.next() == "from-1"  # key 1 in another process is not the origin
    # The store publishes from its script with the same routing header.
    change = await backend.store.apply(session, "k", 1, Operation.SET, Origin("u", "d1", 1))
    for box in (here_peer, there_same_key):
        assert f'"version":{change.version}' in await box.next()
    await backend.broker.publish(session, "to-all")
    assert await here_origin.next() == "to-all"  # neither earlier event reached the origin
    assert await here_peer.next() == "to-all"
    assert await there_same_key.next() == "to-all"


@redis_only
async def test_redis_broker_skips_every_connection_of_excluded_device(backend: Bench) -> None:
    other = await backend.another()
    await ready(backend, other)
    boxes = {
        "here-d1": connect_receiver(backend.hub, "x", 1, device_id="d1"),
        "here-d2": connect_receiver(backend.hub, "x", 2, device_id="d2"),
        "there-d2": connect_receiver(other.hub, "x", 3, device_id="d2"),
        "there-d3": connect_receiver(other.hub, "x", 4, device_id="d3"),
    }
    await backend.broker.watch("x")
    await other.broker.watch("x")
    await other.broker.publish("x", "joined-d2", exclude_device="d2")
    await other.broker.publish("x", "to-all")
    received = {name: [await box.next()] for name, box in boxes.items()}
    assert received == {
        "here-d1": ["joined-d2"],
        "here-d2": ["to-all"],
        "there-d2": ["to-all"],
        "there-d3": ["joined-d2"],
    }


@redis_only
async def test_redis_broker_unwatch_stops_delivery_after_the_last_watch(backend: Bench) -> None:
    await ready(backend)
    broker = backend.broker
    box = connect_receiver(backend.hub, "u", 1)
    await broker.watch("u")
    await broker.watch("u")  # a second local connection of the session
    await broker.unwatch("u")
    await broker.publish("u", "still-watched")
    assert await box.next() == "still-watched"
    assert await subscribers(backend, "u") == 1

    await broker.unwatch("u")
    assert await subscribers(backend, "u") == 0
    await broker.unwatch("u")  # one too many: harmless
    await broker.publish("u", "unheard")
    await broker.watch("u")
    await broker.publish("u", "watched-again")
    assert await box.next() == "watched-again"  # "unheard" never arrived
    assert box.pending() == []


@redis_only
async def test_redis_broker_keeps_order_of_rapid_publishes(backend: Bench) -> None:
    other = await backend.another()
    await ready(backend, other)
    box = connect_receiver(backend.hub, "order", 1)
    await backend.broker.watch("order")
    for i in range(500):
        await other.broker.publish("order", f"event-{i}")
    assert [await box.next() for _ in range(500)] == [f"event-{i}" for i in range(500)]
    assert not box.slow.is_set()


@pytest.fixture
async def small_feed_broker(backend: Bench) -> AsyncIterator[tuple[RedisBroker, Hub]]:
    """A broker whose per-session feed holds 2 events, over a hub that waits long for room."""
    hub = Hub(slow_consumer_timeout=60.0)
    client = connect(backend.settings)
    broker = RedisBroker(client, hub, sharded=False, timeout=2.0, feed_size=2)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        with trio.fail_after(WAIT):
            await broker.connected.wait()
        yield broker, hub
        nursery.cancel_scope.cancel()


@redis_only
async def test_redis_broker_feed_overflow_closes_that_sessions_connections(
    backend: Bench, small_feed_broker: tuple[RedisBroker, Hub]
) -> None:
    broker, hub = small_feed_broker
    await ready(backend)
    stuck = connect_receiver(hub, "slow", 1, size=1)  # nobody reads it
    stuck_too = connect_receiver(hub, "slow", 2, size=1000)
    elsewhere = connect_receiver(hub, "fast", 3)
    await broker.watch("slow")
    await broker.watch("fast")
    for i in range(10):  # 1 in the outbox, 1 waiting for room, 2 in the feed, then overflow
        await backend.broker.publish("slow", f"e{i}")
    with trio.fail_after(WAIT):
        await stuck.slow.wait()
        await stuck_too.slow.wait()  # every local connection of the session resyncs
    assert hub.slow_consumers_closed >= 2
    await backend.broker.publish("fast", "unaffected")
    assert await elsewhere.next() == "unaffected"
    assert not elsewhere.slow.is_set()


@redis_only
async def test_redis_broker_reconnects_and_resyncs_after_connection_loss(backend: Bench) -> None:
    await ready(backend)
    broker: Any = backend.broker
    watched = [connect_receiver(backend.hub, "lost", key) for key in (1, 2)]
    unwatched = connect_receiver(backend.hub, "idle", 3)  # in the hub, never watched
    await broker.watch("lost")
    assert broker.reconnects == 0
    server = backend.redis
    assert server is not None

    await server.stop()
    await server.start()
    with trio.fail_after(WAIT):
        for box in watched:  # events may have been missed: their connections resync
            await box.slow.wait()
        await broker.connected.wait()
    assert broker.reconnects == 1
    assert not unwatched.slow.is_set()
    assert await subscribers(backend, "lost") == 1  # subscribed again by itself
    await backend.store.apply("lost", "k", "after", Operation.SET)
    assert '"value":"after"' in await watched[0].next()


@redis_only
async def test_redis_broker_ignores_foreign_messages_on_a_channel(backend: Bench) -> None:
    # Anyone with access to Redis can PUBLISH on a session's channel; a message
    # that is not ours must not stop the relay for every session of the process.
    await ready(backend)
    box = connect_receiver(backend.hub, "foreign", 1)
    await backend.broker.watch("foreign")
    assert backend.redis is not None
    channel = Keys("foreign").channel
    for junk in ("no header line", "not json\nframe", "[1]\nframe", ""):
        await backend.redis.cli("PUBLISH", channel, junk)
    await backend.broker.publish("foreign", "ours")
    assert await box.next() == "ours"
    assert box.pending() == []
    assert backend.broker.connected.is_set()


@redis_only
async def test_redis_broker_failed_watch_leaves_nothing_to_unwatch(backend: Bench) -> None:
    bench = await backend.another(store_timeout=0.5)
    await ready(bench)
    assert bench.redis is not None
    await bench.redis.cli("CLIENT", "PAUSE", "1000", "ALL")  # SUBSCRIBE goes unanswered
    with pytest.raises(StoreUnavailable):
        await bench.broker.watch("p")
    await bench.redis.cli("CLIENT", "UNPAUSE")  # answered once the pause is over
    # Replies on the pub/sub connection come in order: once this watch returns,
    # the late replies about "p" have been read.
    await bench.broker.watch("barrier")
    assert await subscribers(bench, "p") == 0
    # The caller will not unwatch a watch that failed, so it must not count:
    # one watch and one unwatch later, the process is subscribed to nothing.
    box = connect_receiver(bench.hub, "p", 1)
    await bench.broker.watch("p")
    await bench.broker.publish("p", "watched")
    assert await box.next() == "watched"
    await bench.broker.unwatch("p")
    assert await subscribers(bench, "p") == 0
