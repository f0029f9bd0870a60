"""End to end: snapshots, StateUpdate SET/DELETE, fan-out, ordering and concurrency (v1)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import trio

from syncbridge.client import Client, ServerError, open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer

BOUND = 15  # seconds; every test finishes far sooner


def frame(msg_type: int, payload: Any = None, *, cid: Any = None) -> str:
    message: dict[str, Any] = {"type": msg_type, "timestamp": int(time.time())}
    if payload is not None:
        message["payload"] = payload
    if cid is not None:
        message["correlation_id"] = cid
    return orjson.dumps(message).decode()


async def assert_heard_nothing(client: Client) -> None:
    """Prove by a later reply on the same socket that nothing else was sent to it."""
    await client.heartbeat("probe")
    assert client.pending() == []


async def test_snapshot_of_never_written_session(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(session="fresh")) as client:
            await client.send_raw(frame(MessageType.SNAPSHOT_REQUEST, {}, cid="snap"))
            reply = await client.next_message(timeout=5)
    assert reply["type"] == MessageType.SNAPSHOT_RESPONSE
    assert reply["correlation_id"] == "snap"
    assert reply["payload"] == {
        "session_id": "fresh",
        "state_data": {},
        "created_at": None,
        "updated_at": None,  # additive field
        "version": 0,
    }


async def test_snapshot_after_writes_has_state_and_times(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            before = int(time.time())
            await client.update("a", 1)
            await client.update("b", {"x": [1]})
            await client.delete("a")
            snap = await client.snapshot()
    assert snap["state_data"] == {"b": {"x": [1]}}
    assert snap["version"] == 3
    assert type(snap["created_at"]) is int
    assert before <= snap["created_at"] <= int(time.time())


async def test_snapshot_of_another_session_is_forbidden(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="o", session="other")) as other,
            open_client(server.url, token=server.token(session="mine")) as client,
        ):
            await other.update("secret", "x")
            payload = {"session_id": "other"}
            await client.send_raw(frame(MessageType.SNAPSHOT_REQUEST, payload, cid="peek"))
            reply = await client.next_message(timeout=5)
            assert reply["type"] == MessageType.ERROR
            assert reply["correlation_id"] == "peek"
            assert reply["payload"]["code"] == 403
            assert reply["payload"]["error_code"] == "FORBIDDEN"
            assert "secret" not in orjson.dumps(reply).decode()
            own = await client.request(MessageType.SNAPSHOT_REQUEST, {"session_id": "mine"})
            assert own["payload"]["session_id"] == "mine"
            assert own["payload"]["state_data"] == {}


async def test_update_set_acks_sender_and_broadcasts_to_session(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(user="ua", device="a")) as a,
            open_client(server.url, token=server.token(user="ub", device="b")) as b,
            open_client(server.url, token=server.token(device="z", session="s2")) as outsider,
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            payload = {"key": "theme", "value": "dark"}
            await a.send_raw(frame(MessageType.STATE_UPDATE, payload, cid="set-1"))
            ack = await a.next_message(timeout=5)
            push = await b.wait_for(MessageType.STATE_UPDATE)
            await assert_heard_nothing(outsider)
            await assert_heard_nothing(a)  # the ack was its only copy
    expected = {"key": "theme", "value": "dark", "operation": "SET", "version": 1}
    assert ack["type"] == MessageType.STATE_UPDATE
    assert ack["correlation_id"] == "set-1"
    assert ack["payload"] == expected
    assert push["payload"] == expected
    assert (push["session_id"], push["user_id"], push["device_id"]) == ("s1", "ua", "a")
    assert "correlation_id" not in push
    assert type(push["timestamp"]) is int


async def test_update_delete_broadcasts_and_removes_key(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a")) as a,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            await a.update("gone", 1)
            await a.update("kept", 2)
            payload = {"key": "gone", "operation": "DELETE"}
            await a.send_raw(frame(MessageType.STATE_UPDATE, payload, cid="del"))
            ack = await a.next_message(timeout=5)
            pushes = [await b.wait_for(MessageType.STATE_UPDATE) for _ in range(3)]
            snap = await b.snapshot()
    expected = {"key": "gone", "value": None, "operation": "DELETE", "version": 3}
    assert ack["correlation_id"] == "del"
    assert ack["payload"] == expected
    assert pushes[-1]["payload"] == expected
    assert pushes[-1]["device_id"] == "a"
    assert snap["state_data"] == {"kept": 2}
    assert snap["version"] == 3


async def test_update_reaches_same_devices_other_tab(server: RunningServer) -> None:
    token = server.token(device="a")
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=token) as tab1,
            open_client(server.url, token=token) as tab2,
        ):
            version = await tab1.update("k", "v")
            push = await tab2.wait_for(MessageType.STATE_UPDATE)
    assert push["payload"]["version"] == version
    assert push["device_id"] == "a"


VALUES: list[Any] = [
    "plain",
    "",
    'ünïcødé ✓ 🙂 \u0000 \n\t"quoted" \\',
    0,
    -42,
    9007199254740991,
    3.141592653589793,
    -0.5,
    1e-300,
    True,
    False,
    None,
    {},
    [],
    {"nested": {"deep": {"list": [1, 2.5, "x", None, False, {"k": []}]}}},
    [1, "two", 3.0, None, True, {"a": [{}]}, [[]]],
    "x" * 50_000,
]


async def test_update_values_round_trip_exactly(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a")) as a,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            for i, value in enumerate(VALUES):
                await a.update(f"v{i}", value)
                push = await b.wait_for(MessageType.STATE_UPDATE)
                assert push["payload"]["value"] == value
                assert orjson.dumps(push["payload"]["value"]) == orjson.dumps(value)
            snap = await b.snapshot()
    assert snap["state_data"] == {f"v{i}": v for i, v in enumerate(VALUES)}
    for i, value in enumerate(VALUES):
        assert orjson.dumps(snap["state_data"][f"v{i}"]) == orjson.dumps(value)


KEYS = [
    "a.b.c",
    "a/b\\c",
    "with space",
    "ünï©ødé",
    "🙂",
    "$set",
    "__proto__",
    "line\nbreak",
    '"quoted"',
    "{}[]:,",
    "0",
    "k" * 1024,
]


async def test_update_keys_with_any_characters(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            for i, key in enumerate(KEYS):
                await client.update(key, i)
            snap = await client.snapshot()
            await client.delete("__proto__")
            after = await client.snapshot()
    assert snap["state_data"] == {key: i for i, key in enumerate(KEYS)}
    assert "__proto__" not in after["state_data"]
    assert len(after["state_data"]) == len(KEYS) - 1


async def test_update_100_back_to_back_applied_in_order(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a"), heartbeat_interval=None) as a,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            for i in range(100):
                payload = {"key": "counter", "value": i}
                await a.send_raw(frame(MessageType.STATE_UPDATE, payload, cid=f"u{i}"))
            acks = [await a.next_message(timeout=5) for _ in range(100)]
            pushes = [await b.wait_for(MessageType.STATE_UPDATE) for _ in range(100)]
            snap = await a.snapshot()
    assert [m["correlation_id"] for m in acks] == [f"u{i}" for i in range(100)]
    assert [m["payload"]["value"] for m in acks] == list(range(100))
    versions = [m["payload"]["version"] for m in acks]
    assert versions == list(range(1, 101))
    assert [m["payload"]["version"] for m in pushes] == versions
    assert [m["payload"]["value"] for m in pushes] == list(range(100))
    assert snap["state_data"] == {"counter": 99}
    assert snap["version"] == 100


async def test_update_concurrent_sockets_keep_every_update(server: RunningServer) -> None:
    sockets, per_socket = 10, 30
    total = sockets * per_socket
    versions: list[int] = []

    async def write_all(client: Client, n: int) -> None:
        async def one(i: int) -> None:
            versions.append(await client.update(f"s{n}-k{i}", [n, i]))

        async with trio.open_nursery() as nursery:
            for i in range(per_socket):
                nursery.start_soon(one, i)

    async def run(n: int, ready: trio.Event, go: trio.Event, done: list[Client]) -> None:
        async with open_client(server.url, token=server.token(device=f"d{n}")) as client:
            ready.set()
            await go.wait()
            await write_all(client, n)
            # Each socket hears every update of the others, once each.
            seen = {
                (await client.wait_for(MessageType.STATE_UPDATE))["payload"]["version"]
                for _ in range(total - per_socket)
            }
            assert len(seen) == total - per_socket
            done.append(client)

    with trio.fail_after(BOUND):
        go = trio.Event()
        done: list[Client] = []
        async with trio.open_nursery() as nursery:
            for n in range(sockets):
                ready = trio.Event()
                nursery.start_soon(run, n, ready, go, done)
                await ready.wait()
            go.set()
        async with open_client(server.url, token=server.token(device="reader")) as reader:
            snap = await reader.snapshot()
    assert len(done) == sockets
    assert sorted(versions) == list(range(1, total + 1))
    assert snap["version"] == total
    assert snap["state_data"] == {
        f"s{n}-k{i}": [n, i] for n in range(sockets) for i in range(per_socket)
    }


async def test_update_state_too_large_is_413_and_changes_nothing(server_factory: Any) -> None:
    server = await server_factory(max_state_bytes=1000)
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a")) as a,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            await a.update("small", "x" * 100)
            await b.wait_for(MessageType.STATE_UPDATE)
            with pytest.raises(ServerError) as caught:
                await a.update("big", "y" * 2000)
            error = caught.value.raw
            with pytest.raises(ServerError) as grown:
                await a.update("small", "z" * 1000)
            await assert_heard_nothing(b)
            snap = await b.snapshot()
    assert error["type"] == MessageType.ERROR
    assert error["correlation_id"] is not None  # request() matched it by id
    assert error["payload"]["code"] == 413
    assert error["payload"]["error_code"] == "STATE_TOO_LARGE"
    assert isinstance(error["payload"]["message"], str)
    assert grown.value.error_code == "STATE_TOO_LARGE"
    assert snap["state_data"] == {"small": "x" * 100}
    assert snap["version"] == 1


async def test_correlation_id_echoed_on_every_reply_type(server: RunningServer) -> None:
    ids: list[Any] = ["str-id", 17, {"obj": [1, "x"]}]
    token = server.token()
    requests: list[tuple[int, dict[str, Any], int]] = [
        (MessageType.HEARTBEAT, {"client_time": 1}, MessageType.HEARTBEAT_ACK),
        (MessageType.SNAPSHOT_REQUEST, {}, MessageType.ERROR),  # before auth
        (MessageType.AUTH, {"token": "garbage"}, MessageType.AUTH_FAILURE),
        (MessageType.AUTH, {"token": token}, MessageType.AUTH_SUCCESS),
        (MessageType.SNAPSHOT_REQUEST, {}, MessageType.SNAPSHOT_RESPONSE),
        (MessageType.STATE_UPDATE, {"key": "k", "value": 1}, MessageType.STATE_UPDATE),
        (MessageType.DEVICE_LIST, {}, MessageType.DEVICE_LIST),
        (MessageType.STATE_UPDATE, {"value": 1}, MessageType.ERROR),  # no key
        (99, {}, MessageType.ERROR),
    ]
    with trio.fail_after(BOUND):
        for cid in ids:
            async with open_client(server.url) as client:
                for msg_type, payload, reply_type in requests:
                    await client.send_raw(frame(msg_type, payload, cid=cid))
                    reply = await client.next_message(timeout=5)
                    assert (reply["type"], reply["correlation_id"]) == (reply_type, cid)
