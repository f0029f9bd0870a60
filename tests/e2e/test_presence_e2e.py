"""End to end: DeviceJoined, DeviceLeft, DeviceList and the device limit (v1)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import trio

from syncbridge.client import Client, open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer

BOUND = 10  # seconds; every test finishes far sooner
PRESENCE = (MessageType.DEVICE_JOINED, MessageType.DEVICE_LEFT)


def presence_in(client: Client) -> list[dict[str, Any]]:
    return [m for m in client.pending() if m["type"] in PRESENCE]


async def assert_no_presence(client: Client) -> None:
    """Prove by a later reply on the same socket that no presence message came."""
    await client.heartbeat("probe")
    assert presence_in(client) == []


async def test_device_joined_goes_to_other_devices_only(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(user="ua", device="a")) as a:
            before = int(time.time())
            async with open_client(
                server.url,
                token=server.token(user="ub", device="b"),
                device_type="mobile",
                device_name="Bob's phone",
            ) as b:
                joined = await a.wait_for(MessageType.DEVICE_JOINED)
                # The joining device hears nothing about itself (nor about a,
                # which it learns from DeviceList).
                await assert_no_presence(b)
                await assert_no_presence(a)
    assert joined["payload"] == {
        "device_id": "b",
        "user_id": "ub",
        "device_type": "mobile",
        "device_name": "Bob's phone",
        "connected_at": joined["payload"]["connected_at"],
    }
    assert type(joined["payload"]["connected_at"]) is int
    assert before <= joined["payload"]["connected_at"] <= int(time.time())
    assert (joined["session_id"], joined["user_id"], joined["device_id"]) == ("s1", "ub", "b")
    assert "correlation_id" not in joined


async def test_device_joined_not_sent_for_same_devices_other_tab(server: RunningServer) -> None:
    token_a = server.token(device="a")
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=token_a) as tab1,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            await tab1.wait_for(MessageType.DEVICE_JOINED)
            async with open_client(server.url, token=token_a) as tab2:
                version = await tab2.update("from", "tab2")
                # The update is the next thing b hears: no DeviceJoined before it.
                push = await b.next_message(timeout=5)
                assert push["type"] == MessageType.STATE_UPDATE
                assert push["payload"]["version"] == version
                own = await tab1.next_message(timeout=5)
                assert own["type"] == MessageType.STATE_UPDATE
                await assert_no_presence(tab2)


async def test_device_left_sent_when_last_socket_closes(server: RunningServer) -> None:
    token_a = server.token(user="ua", device="a")
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(device="b")) as b:
            async with open_client(server.url, token=token_a) as tab1:
                await b.wait_for(MessageType.DEVICE_JOINED)
                async with open_client(server.url, token=token_a) as tab2:
                    await tab2.update("x", 1)
                    await b.wait_for(MessageType.STATE_UPDATE)
                # tab2 closed; tab1 keeps device a online.
                version = await tab1.update("x", 2)
                push = await b.next_message(timeout=5)
                assert push["type"] == MessageType.STATE_UPDATE
                assert push["payload"]["version"] == version
                before = int(time.time())
            left = await b.wait_for(MessageType.DEVICE_LEFT)
            listing = await b.devices()
    assert left["payload"] == {
        "device_id": "a",
        "user_id": "ua",
        "last_seen": left["payload"]["last_seen"],
    }
    assert before <= left["payload"]["last_seen"] <= int(time.time())
    assert (left["session_id"], left["user_id"], left["device_id"]) == ("s1", "ua", "a")
    offline = [d for d in listing["devices"] if d["device_id"] == "a"]
    assert [d["is_online"] for d in offline] == [False]


async def test_device_left_not_sent_to_other_sessions(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="b")) as b,
            open_client(server.url, token=server.token(device="z", session="s2")) as z,
        ):
            async with open_client(server.url, token=server.token(device="a")):
                await b.wait_for(MessageType.DEVICE_JOINED)
            await b.wait_for(MessageType.DEVICE_LEFT)
            await assert_no_presence(z)


async def test_device_list_shape_and_auth_fields(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        before = int(time.time())
        async with (
            open_client(
                server.url,
                token=server.token(user="ua", device="a"),
                device_type="web",
                device_name="Firefox",
            ) as a,
            open_client(server.url, token=server.token(user="ub", device="b")) as b,
            open_client(server.url, token=server.token(device="z", session="s2")),
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            await a.send_raw(
                orjson.dumps(
                    {"type": MessageType.DEVICE_LIST, "payload": {}, "correlation_id": "list"}
                ).decode()
            )
            reply = await a.next_message(timeout=5)
            from_b = await b.devices()
    assert reply["type"] == MessageType.DEVICE_LIST
    assert reply["correlation_id"] == "list"
    payload = reply["payload"]
    assert set(payload) == {"devices", "count"}
    assert payload["count"] == 2
    by_id = {d["device_id"]: d for d in payload["devices"]}
    assert set(by_id) == {"a", "b"}
    for device in payload["devices"]:
        assert {
            "device_id",
            "device_type",
            "device_name",
            "connected_at",
            "last_seen",
            "is_online",
        } <= set(device)
        assert device["is_online"] is True
        assert type(device["connected_at"]) is int
        assert type(device["last_seen"]) is int
        assert before <= device["connected_at"] <= device["last_seen"] <= int(time.time())
    assert (by_id["a"]["device_type"], by_id["a"]["device_name"]) == ("web", "Firefox")
    assert (by_id["b"]["device_type"], by_id["b"]["device_name"]) == (None, None)
    assert by_id["a"]["user_id"] == "ua"
    assert from_b == payload


async def test_device_limit_refuses_auth_with_auth_failure_429(server_factory: Any) -> None:
    server: RunningServer = await server_factory(max_devices_per_session=2)
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a")) as a,
            open_client(server.url, token=server.token(device="b")) as b,
            open_client(server.url) as c,
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            token_c = server.token(device="c")
            payload = {"token": token_c}
            await c.send_raw(
                orjson.dumps(
                    {"type": MessageType.AUTH, "payload": payload, "correlation_id": "auth-c"}
                ).decode()
            )
            reply = await c.next_message(timeout=5)
            assert reply["type"] == MessageType.AUTH_FAILURE
            assert reply["correlation_id"] == "auth-c"
            assert reply["payload"]["code"] == 429
            assert reply["payload"]["error_code"] == "TOO_MANY_DEVICES"
            assert isinstance(reply["payload"]["message"], str)
            # c stays open and unauthenticated; a and b heard of no new device.
            await c.send_raw(
                orjson.dumps({"type": MessageType.SNAPSHOT_REQUEST, "correlation_id": 1}).decode()
            )
            refused = await c.next_message(timeout=5)
            assert refused["payload"]["code"] == 403
            await assert_no_presence(a)
            await assert_no_presence(b)
            assert (await a.devices())["count"] == 2
            # Another tab of an online device is not a new device.
            async with open_client(server.url, token=server.token(device="a")) as a2:
                assert (await a2.devices())["count"] == 2
            # Once b leaves there is room for c on the same socket.
            await b.aclose()
            await a.wait_for(MessageType.DEVICE_LEFT)
            ok = await c.authenticate(token_c)
            assert ok["device_id"] == "c"
            joined = await a.wait_for(MessageType.DEVICE_JOINED)
            assert joined["payload"]["device_id"] == "c"


async def test_refresh_auth_updates_device_description_without_rejoining(
    server: RunningServer,
) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a")) as a,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            await b.authenticate(server.token(device="b"), device_type="tablet", device_name="iPad")
            listed = {d["device_id"]: d for d in (await a.devices())["devices"]}
            assert (listed["b"]["device_type"], listed["b"]["device_name"]) == ("tablet", "iPad")
            assert listed["b"]["is_online"] is True
            await assert_no_presence(a)
