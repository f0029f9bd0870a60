"""Redis Cluster: two servers on a 3-master cluster, sessions spread over the masters.

A session's keys and its channel share one hash tag, so each session lives on
one master and its events travel by sharded pub/sub (SPUBLISH/SSUBSCRIBE).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import trio

from syncbridge.client import Client, open_client
from syncbridge.protocol.messages import MessageType
from syncbridge.redis.broker import CONTROL_CHANNEL

from ..conftest import mint
from ..redis_harness import RedisCluster
from . import open_resuming, open_servers, redis_settings, resume_auth, updates_until

BOUND = 30  # seconds; every test finishes far sooner


def channel(session: str) -> str:
    return "session:{" + session + "}:events"


def servers_on(cluster: RedisCluster) -> Any:
    return open_servers(redis_settings(cluster.url, redis_cluster=True), 2)


async def owner_of(cluster: RedisCluster, key: str) -> int:
    """The port of the master that serves ``key``'s hash slot."""
    slot = int(await cluster.cli("CLUSTER", "KEYSLOT", key))
    for line in (await cluster.servers[0].cli("CLUSTER", "NODES")).splitlines():
        fields = line.split()
        port = int(fields[1].partition("@")[0].rpartition(":")[2])
        for slots in fields[8:]:
            first, _, last = slots.partition("-")
            if int(first) <= slot <= int(last or first):
                return port
    raise AssertionError(f"no master serves slot {slot}")


async def shard_channels(cluster: RedisCluster) -> dict[str, list[int]]:
    """Sharded channels with subscribers -> the ports of the nodes that have them."""
    found: dict[str, list[int]] = {}
    for node in cluster.servers:
        for name in (await node.cli("PUBSUB", "SHARDCHANNELS")).split():
            found.setdefault(name, []).append(node.port)
    return found


async def test_cluster_delivery_presence_and_resume_across_servers(
    redis_cluster: RedisCluster,
) -> None:
    with trio.fail_after(BOUND):
        async with (
            servers_on(redis_cluster) as (a, b),
            open_client(b.url, token=mint(user="yan", device="y")) as y,
        ):
            async with open_client(a.url, token=mint(user="xia", device="x")) as x:
                joined = await y.wait_for(MessageType.DEVICE_JOINED)
                assert joined["payload"]["device_id"] == "x"
                assert await x.update("theme", "dark") == 1
                push = (await updates_until(y, 1))[0]
                assert push["payload"]["key"] == "theme"
                assert (push["user_id"], push["device_id"]) == ("xia", "x")
                listed = await y.devices()
                online = {d["device_id"]: d["is_online"] for d in listed["devices"]}
                assert online == {"x": True, "y": True}
                # Sharded pub/sub: the channel is subscribed on the master that
                # holds the session's keys, and is no classic channel anywhere.
                owner = await owner_of(redis_cluster, "session:{s1}")
                assert (await shard_channels(redis_cluster))[channel("s1")] == [owner]
                assert await owner_of(redis_cluster, channel("s1")) == owner
                for node in redis_cluster.servers:
                    assert channel("s1") not in (await node.cli("PUBSUB", "CHANNELS")).split()
            left = await y.wait_for(MessageType.DEVICE_LEFT)
            assert left["payload"]["device_id"] == "x"

            # y goes away; x writes on server A; y resumes on server A.
            await y.aclose()
            async with open_client(a.url, token=mint(user="xia", device="x")) as x:
                assert await x.update("draft", "v2") == 2
                assert await x.delete("theme") == 3
                async with open_resuming(a.url) as again:
                    _, resume = await resume_auth(again, mint(user="yan", device="y"), 1)
                    payload = resume["payload"]
                    assert (payload["mode"], payload["from_version"], payload["version"]) == (
                        "changes",
                        1,
                        3,
                    )
                    assert [
                        (c["version"], c["key"], c["operation"]) for c in payload["changes"]
                    ] == [
                        (2, "draft", "SET"),
                        (3, "theme", "DELETE"),
                    ]
                    assert {c["device_id"] for c in payload["changes"]} == {"x"}


async def test_cluster_sessions_on_every_master_all_work(redis_cluster: RedisCluster) -> None:
    sessions = [f"room-{i}" for i in range(10)]
    homes: dict[int, list[str]] = {}

    async def exchange(x: Client, y: Client, session: str) -> None:
        assert await x.update("owner", session) == 1
        assert [p["device_id"] for p in await updates_until(y, 1)] == ["x"]
        assert await y.update("seen", True) == 2
        assert [p["device_id"] for p in await updates_until(x, 2)] == ["y"]

    with trio.fail_after(BOUND):
        async with servers_on(redis_cluster) as (a, b):
            async with AsyncExitStack() as stack:
                pairs = [
                    (
                        await stack.enter_async_context(
                            open_client(a.url, token=mint(device="x", session=session))
                        ),
                        await stack.enter_async_context(
                            open_client(b.url, token=mint(device="y", session=session))
                        ),
                    )
                    for session in sessions
                ]
                # All ten sessions at once, each with one device on each server.
                async with trio.open_nursery() as nursery:
                    for (x, y), session in zip(pairs, sessions, strict=True):
                        nursery.start_soon(exchange, x, y, session)
                channels = await shard_channels(redis_cluster)
                for (x, _), session in zip(pairs, sessions, strict=True):
                    snap = await x.snapshot()
                    assert snap["state_data"] == {"owner": session, "seen": True}
                    # The session's channel is on the master holding its state.
                    owner = await owner_of(redis_cluster, "session:{" + session + "}")
                    assert channels[channel(session)] == [owner]
                    node = next(n for n in redis_cluster.servers if n.port == owner)
                    stored = await node.cli("HGET", "session:{" + session + "}", "owner")
                    assert stored.strip() == f'"{session}"'
                    homes.setdefault(owner, []).append(session)
            # These ten session ids hash to slots on all three masters.
            assert len(homes) == 3, homes
            # With no device left, no server listens to any session (only to the
            # control channel, which every process keeps).
            await a.app.wait_no_connections()
            await b.app.wait_no_connections()
            left = await shard_channels(redis_cluster)
            assert [name for name in left if name != CONTROL_CHANNEL] == []
