"""End to end: malformed input is answered with an Error, the socket stays open, nothing changes."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import trio

from syncbridge.client import Client, open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer

BOUND = 10  # seconds; every test finishes far sooner
NO_CID = object()


def dumps(message: Any) -> str:
    return orjson.dumps(message).decode()


def msg(msg_type: Any, payload: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": msg_type, "timestamp": int(time.time()), "payload": payload}
    message.update(extra)
    return message


async def assert_unchanged(a: Client, b: Client) -> None:
    """The session still holds only the seed value, and b heard nothing new."""
    snap = await a.snapshot()
    assert snap["state_data"] == {"seed": 1}
    assert snap["version"] == 1
    await b.heartbeat("probe")
    assert b.pending() == []


# (frame, status, error_code, a word the message must contain)
BAD_FRAMES: list[Any] = [
    pytest.param("{not json", 400, "INVALID_MESSAGE", "JSON", id="invalid-json"),
    pytest.param("", 400, "INVALID_MESSAGE", "JSON", id="empty-frame"),
    pytest.param('{"type": 1', 400, "INVALID_MESSAGE", "JSON", id="truncated-json"),
    pytest.param("[1, 2]", 400, "INVALID_MESSAGE", "object", id="array-message"),
    pytest.param("42", 400, "INVALID_MESSAGE", "object", id="number-message"),
    pytest.param('"text"', 400, "INVALID_MESSAGE", "object", id="string-message"),
    pytest.param("null", 400, "INVALID_MESSAGE", "object", id="null-message"),
    pytest.param(msg(99, {}), 400, "UNKNOWN_TYPE", "type", id="unknown-type"),
    pytest.param(msg(-1, {}), 400, "UNKNOWN_TYPE", "type", id="negative-type"),
    pytest.param(msg(0, {}), 400, "UNKNOWN_TYPE", "type", id="type-zero"),
    pytest.param(msg(4, {}), 400, "UNKNOWN_TYPE", "type", id="server-only-type"),
    pytest.param(msg(14, {}), 400, "UNKNOWN_TYPE", "type", id="admin-update-type"),
    pytest.param(msg("5", {}), 400, "INVALID_MESSAGE", "type", id="type-as-string"),
    pytest.param(msg(5.0, {}), 400, "INVALID_MESSAGE", "type", id="type-as-float"),
    pytest.param(msg(True, {}), 400, "INVALID_MESSAGE", "type", id="type-as-bool"),
    pytest.param({"payload": {}}, 400, "INVALID_MESSAGE", "type", id="type-missing"),
    pytest.param(
        msg(5, {"key": "k", "value": 1}, timestamp="now"),
        400,
        "INVALID_MESSAGE",
        "timestamp",
        id="timestamp-as-string",
    ),
    pytest.param(msg(5, [1]), 400, "INVALID_MESSAGE", "payload", id="payload-array"),
    pytest.param(msg(3, "x"), 400, "INVALID_MESSAGE", "payload", id="payload-string"),
    pytest.param(msg(12, 5), 400, "INVALID_MESSAGE", "payload", id="payload-number"),
    pytest.param(msg(5, {"value": 1}), 400, "INVALID_MESSAGE", "key", id="update-without-key"),
    pytest.param(msg(5, {"key": 5, "value": 1}), 400, "INVALID_MESSAGE", "key", id="key-number"),
    pytest.param(msg(5, {"key": None, "value": 1}), 400, "INVALID_MESSAGE", "key", id="key-null"),
    pytest.param(msg(5, {"key": "", "value": 1}), 400, "INVALID_MESSAGE", "key", id="key-empty"),
    pytest.param(
        msg(5, {"key": "k" * 1025, "value": 1}), 400, "INVALID_MESSAGE", "key", id="key-too-long"
    ),
    pytest.param(msg(5, {"key": "k"}), 400, "INVALID_MESSAGE", "value", id="set-without-value"),
    pytest.param(
        msg(5, {"key": "seed", "operation": "UPSERT"}),
        400,
        "INVALID_MESSAGE",
        "operation",
        id="bad-operation",
    ),
    pytest.param(
        msg(5, {"key": "seed", "operation": 2}),
        400,
        "INVALID_MESSAGE",
        "operation",
        id="operation-number",
    ),
    pytest.param(
        msg(3, {"session_id": 5}), 400, "INVALID_MESSAGE", "session_id", id="session-id-number"
    ),
    pytest.param(
        msg(7, {"token": "t", "device_type": 5}),
        400,
        "INVALID_MESSAGE",
        "device_type",
        id="device-type-number",
    ),
]


@pytest.mark.parametrize(("bad", "status", "error_code", "word"), BAD_FRAMES)
async def test_bad_input_answers_error_and_keeps_socket(
    server: RunningServer, bad: Any, status: int, error_code: str, word: str
) -> None:
    cid: Any = NO_CID
    if isinstance(bad, dict):
        cid = "bad-1"
        bad = dumps({**bad, "correlation_id": cid})
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a")) as a,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            await a.update("seed", 1)
            await b.wait_for(MessageType.STATE_UPDATE)
            await a.send_raw(bad)
            reply = await a.next_message(timeout=5)
            await assert_unchanged(a, b)
    assert reply["type"] == MessageType.ERROR
    payload = reply["payload"]
    assert payload["code"] == status
    assert payload["error_code"] == error_code
    assert word.lower() in payload["message"].lower()
    assert set(payload) <= {"code", "message", "error_code", "details"}
    if word not in ("JSON", "object"):
        assert word in payload["details"]["field"]
    if cid is NO_CID:
        assert "correlation_id" not in reply
    else:
        assert reply["correlation_id"] == cid


async def test_bad_input_many_in_a_row_then_normal_traffic(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            for bad in ("{", "[]", dumps(msg(99)), dumps(msg(5, {"value": 1})), "\x00"):
                await client.send_raw(bad)
                error = await client.next_message(timeout=5)
                assert error["type"] == MessageType.ERROR
            version = await client.update("after", "ok")
            snap = await client.snapshot()
    assert version == 1
    assert snap["state_data"] == {"after": "ok"}


# -- oddities v1 accepts -------------------------------------------------------


async def test_update_missing_timestamp_accepted(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            frame = {"type": 5, "payload": {"key": "k", "value": 1}, "correlation_id": "no-ts"}
            await client.send_raw(dumps(frame))
            ack = await client.next_message(timeout=5)
            await client.send_raw(dumps({**frame, "timestamp": None, "correlation_id": "null-ts"}))
            ack_null = await client.next_message(timeout=5)
            snap = await client.snapshot()
    assert (ack["type"], ack["correlation_id"], ack["payload"]["version"]) == (5, "no-ts", 1)
    assert (ack_null["type"], ack_null["payload"]["version"]) == (5, 2)
    assert snap["state_data"] == {"k": 1}


@pytest.mark.parametrize(
    ("msg_type", "reply_type"),
    [
        (MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK),
        (MessageType.SNAPSHOT_REQUEST, MessageType.SNAPSHOT_RESPONSE),
        (MessageType.DEVICE_LIST, MessageType.DEVICE_LIST),
    ],
)
async def test_null_or_missing_payload_accepted_as_empty(
    server: RunningServer, msg_type: int, reply_type: int
) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            await client.send_raw(dumps({"type": msg_type, "payload": None, "correlation_id": 1}))
            null_reply = await client.next_message(timeout=5)
            await client.send_raw(dumps({"type": msg_type, "correlation_id": 2}))
            missing_reply = await client.next_message(timeout=5)
    assert (null_reply["type"], null_reply["correlation_id"]) == (reply_type, 1)
    assert (missing_reply["type"], missing_reply["correlation_id"]) == (reply_type, 2)
    assert null_reply["payload"].keys() == missing_reply["payload"].keys()


async def test_null_payload_auth_is_auth_failure(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url) as client:
            await client.send_raw(dumps({"type": 7, "payload": None, "correlation_id": "a"}))
            reply = await client.next_message(timeout=5)
    assert reply["type"] == MessageType.AUTH_FAILURE
    assert reply["payload"]["code"] == 401


async def test_unknown_fields_ignored(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            frame = msg(
                5,
                {"key": "k", "value": "v", "extra": {"ignored": True}},
                correlation_id="x",
                session_id="someone-else",
                device_id="spoofed",
                future_field=[1],
            )
            await client.send_raw(dumps(frame))
            ack = await client.next_message(timeout=5)
            snap = await client.snapshot()
    assert ack["payload"] == {"key": "k", "value": "v", "operation": "SET", "version": 1}
    # Routing and identity come from the token, never from envelope fields.
    assert (ack["session_id"], ack["device_id"]) == ("s1", "d1")
    assert snap["session_id"] == "s1"
    assert snap["state_data"] == {"k": "v"}


async def test_binary_frame_with_valid_json_accepted(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url) as client:
            await client.send_raw(
                orjson.dumps(msg(7, {"token": server.token()}, correlation_id="bin-auth"))
            )
            auth = await client.next_message(timeout=5)
            await client.send_raw(
                orjson.dumps(msg(5, {"key": "bin", "value": "ünï"}, correlation_id="bin-set"))
            )
            ack = await client.next_message(timeout=5)
            await client.send_raw(b"\xff\xfe not json")
            error = await client.next_message(timeout=5)
            snap = await client.snapshot()
    assert (auth["type"], auth["correlation_id"]) == (MessageType.AUTH_SUCCESS, "bin-auth")
    assert (ack["type"], ack["payload"]["version"]) == (MessageType.STATE_UPDATE, 1)
    assert (error["type"], error["payload"]["code"]) == (MessageType.ERROR, 400)
    assert snap["state_data"] == {"bin": "ünï"}
