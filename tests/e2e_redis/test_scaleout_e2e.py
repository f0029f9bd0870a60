"""Scale-out: two SyncBridge servers on one Redis behave as one server.

Each server started here is a separate SyncBridge "process" (its own hub,
broker and process id) sharing one real redis-server; clients are the real
client over real sockets.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import trio

from syncbridge.client import Client, open_client
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from ..conftest import mint
from ..redis_harness import RedisServer
from . import open_resuming, open_servers, redis_settings, resume_auth, updates_until

BOUND = 20  # seconds; every test finishes far sooner


def two_servers(redis: RedisServer) -> Any:
    """Servers A and B on one Redis."""
    return open_servers(redis_settings(redis.url), 2)


def channel(session: str) -> str:
    return "session:{" + session + "}:events"


async def numsub(redis: RedisServer, session: str) -> int:
    out = (await redis.cli("PUBSUB", "NUMSUB", channel(session))).split()
    return int(out[1])


async def assert_no_updates(client: Client) -> None:
    """Prove by a later reply on the same socket that no StateUpdate push is pending."""
    await client.heartbeat("probe")
    assert [m for m in client.pending() if m["type"] == MessageType.STATE_UPDATE] == []


def versions(pushes: list[dict[str, Any]]) -> list[int]:
    return [p["payload"]["version"] for p in pushes]


async def test_scaleout_update_reaches_every_other_device_once_in_order(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(BOUND):
        async with (
            two_servers(redis_server) as (a, b),
            open_client(a.url, token=mint(user="alice", device="writer")) as writer,
            open_client(a.url, token=mint(user="ann", device="a2")) as a2,
            open_client(b.url, token=mint(user="bob", device="b1")) as b1,
            open_client(b.url, token=mint(user="bea", device="b2")) as b2,
        ):
            acks = [await writer.update(f"k{i}", {"n": i}) for i in range(5)]
            assert acks == [1, 2, 3, 4, 5]
            # A marker from another device: everything the writer sent is before it.
            marker = await b2.update("marker", True)
            for receiver in (a2, b1):
                pushes = await updates_until(receiver, marker)
                assert versions(pushes) == [1, 2, 3, 4, 5, 6]
                for i, push in enumerate(pushes[:5]):
                    assert push["payload"] == {
                        "key": f"k{i}",
                        "value": {"n": i},
                        "operation": "SET",
                        "version": i + 1,
                    }
                    assert (push["session_id"], push["user_id"], push["device_id"]) == (
                        "s1",
                        "alice",
                        "writer",
                    )
                    assert "correlation_id" not in push
                assert pushes[5]["device_id"] == "b2"
                await assert_no_updates(receiver)
            # The writer got acks (replies) only: its first push is b2's marker.
            pushes = await updates_until(writer, marker)
            assert versions(pushes) == [marker]
            assert pushes[0]["device_id"] == "b2"
            await assert_no_updates(writer)
            # b2 on B likewise heard the writer's updates but not its own marker.
            assert versions(await updates_until(b2, 5)) == [1, 2, 3, 4, 5]
            await assert_no_updates(b2)


async def test_scaleout_concurrent_writers_on_both_servers_one_order(
    redis_server: RedisServer,
) -> None:
    writers, per_writer = 5, 40
    total = writers * per_writer
    acked: dict[int, list[int]] = {}

    async def write(client: Client, w: int) -> None:
        acked[w] = [await client.update(f"w{w}", i) for i in range(per_writer)]

    with trio.fail_after(BOUND):
        async with (
            two_servers(redis_server) as (a, b),
            open_client(a.url, token=mint(device="ra")) as ra,
            open_client(b.url, token=mint(device="rb")) as rb,
            open_client(a.url, token=mint(device="other-a", session="s2")) as other_a,
            open_client(b.url, token=mint(device="other-b", session="s2")) as other_b,
            AsyncExitStack() as stack,
        ):
            clients = [
                await stack.enter_async_context(
                    open_client((a, b)[w % 2].url, token=mint(user=f"u{w}", device=f"w{w}"))
                )
                for w in range(writers)
            ]
            async with trio.open_nursery() as writing:
                for w, client in enumerate(clients):
                    writing.start_soon(write, client, w)
            for receiver in (ra, rb):
                pushes = await updates_until(receiver, total)
                assert versions(pushes) == list(range(1, total + 1))
                # Each writer's updates appear in the order it sent them.
                for w in range(writers):
                    mine = [p["payload"]["value"] for p in pushes if p["device_id"] == f"w{w}"]
                    assert mine == list(range(per_writer))
                await assert_no_updates(receiver)
            all_acks = sorted(v for vs in acked.values() for v in vs)
            assert all_acks == list(range(1, total + 1))
            for vs in acked.values():
                assert vs == sorted(vs)
            snap = await rb.snapshot()
            assert snap["version"] == total
            assert snap["state_data"] == {f"w{w}": per_writer - 1 for w in range(writers)}
            # Another session on the same servers heard nothing and has its own versions.
            for other in (other_a, other_b):
                await assert_no_updates(other)
            assert await other_a.update("own", 1) == 1
            assert versions(await updates_until(other_b, 1)) == [1]


async def test_scaleout_presence_crosses_servers(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(BOUND):
        async with (
            two_servers(redis_server) as (a, b),
            open_client(b.url, token=mint(user="bob", device="y")) as y,
        ):
            async with open_client(
                a.url, token=mint(user="xena", device="x"), device_type="web", device_name="X"
            ) as x:
                joined = await y.wait_for(MessageType.DEVICE_JOINED)
                assert joined["payload"]["device_id"] == "x"
                assert joined["payload"]["user_id"] == "xena"
                assert joined["payload"]["device_type"] == "web"
                assert joined["payload"]["device_name"] == "X"
                assert (joined["session_id"], joined["device_id"]) == ("s1", "x")
                listed = await y.devices()
                assert listed["count"] == 2
                online = {d["device_id"]: d["is_online"] for d in listed["devices"]}
                assert online == {"x": True, "y": True}
                entry = next(d for d in listed["devices"] if d["device_id"] == "x")
                assert (entry["user_id"], entry["device_type"], entry["device_name"]) == (
                    "xena",
                    "web",
                    "X",
                )
                # The same list from either server.
                assert {d["device_id"] for d in (await x.devices())["devices"]} == {"x", "y"}
                # x hears nothing of its own arrival.
                await x.heartbeat("probe")
                assert [m["type"] for m in x.pending()] == []
            left = await y.wait_for(MessageType.DEVICE_LEFT)
            assert left["payload"]["device_id"] == "x"
            assert left["payload"]["user_id"] == "xena"
            assert type(left["payload"]["last_seen"]) is int
            listed = await y.devices()
            online = {d["device_id"]: d["is_online"] for d in listed["devices"]}
            assert online == {"x": False, "y": True}
            assert listed["devices"][0]["device_id"] == "y"  # online first
            await y.heartbeat("probe")
            presence = (MessageType.DEVICE_JOINED, MessageType.DEVICE_LEFT)
            assert [m for m in y.pending() if m["type"] in presence] == []


async def test_scaleout_state_survives_server_restart(
    redis_server: RedisServer,
) -> None:
    settings = redis_settings(redis_server.url)
    with trio.fail_after(BOUND):
        async with (
            open_servers(settings) as (a,),
            open_client(a.url, token=mint(device="d1")) as client,
        ):
            await client.update("theme", "dark")
            await client.update("draft", "x")
            await client.delete("draft")
            before = await client.snapshot()
            a.stop.set()  # graceful stop: the device is told to reconnect
            assert (await client.wait_closed()).code == CloseCode.GOING_AWAY
        assert before["version"] == 3
        # Server A is gone; a new one on the same Redis takes over.
        async with open_servers(settings) as (c,), open_resuming(c.url) as client:
            _, resume = await resume_auth(client, mint(device="d1"), 3)
            assert resume["payload"] == {
                "mode": "changes",
                "from_version": 3,
                "version": 3,
                "changes": [],
            }
            snap = await client.snapshot()
            assert snap == before
            assert snap["state_data"] == {"theme": "dark"}
            assert await client.update("theme", "light") == 4


async def test_scaleout_channel_subscribed_while_a_local_device_is_connected(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(BOUND):
        async with two_servers(redis_server) as (a, b):
            assert await numsub(redis_server, "s1") == 0
            async with open_client(a.url, token=mint(device="a1")) as a1:
                # Subscribed before AuthSuccess: one subscription per process, not per device.
                assert await numsub(redis_server, "s1") == 1
                async with open_client(a.url, token=mint(device="a2")):
                    assert await numsub(redis_server, "s1") == 1
                    async with open_client(b.url, token=mint(device="b1")):
                        assert await numsub(redis_server, "s1") == 2
                        assert (
                            channel("s1") in (await redis_server.cli("PUBSUB", "CHANNELS")).split()
                        )
                    await b.app.wait_no_connections()
                    assert await numsub(redis_server, "s1") == 1
                    left = await a1.wait_for(MessageType.DEVICE_LEFT)
                    assert left["payload"]["device_id"] == "b1"
                left = await a1.wait_for(MessageType.DEVICE_LEFT)
                assert left["payload"]["device_id"] == "a2"
                assert await numsub(redis_server, "s1") == 1
            await a.app.wait_no_connections()
            assert await numsub(redis_server, "s1") == 0
            assert channel("s1") not in (await redis_server.cli("PUBSUB", "CHANNELS")).split()
