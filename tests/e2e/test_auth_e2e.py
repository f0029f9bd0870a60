"""End to end: Heartbeat before auth, Auth success and failure, 403 before auth (v1)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import orjson
import pytest
import trio

from syncbridge.client import Client, open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import SECRET, RunningServer, mint

BOUND = 10  # seconds; every test finishes far sooner


def frame(msg_type: int, payload: Any = None, *, cid: Any = None, **extra: Any) -> str:
    message: dict[str, Any] = {"type": msg_type, "timestamp": int(time.time()), **extra}
    if payload is not None:
        message["payload"] = payload
    if cid is not None:
        message["correlation_id"] = cid
    return orjson.dumps(message).decode()


async def exchange(
    client: Client, msg_type: int, payload: Any = None, *, cid: Any
) -> dict[str, Any]:
    """Send one raw request and return the next message, which must echo ``cid``."""
    await client.send_raw(frame(msg_type, payload, cid=cid))
    reply = await client.next_message(timeout=5)
    assert reply["correlation_id"] == cid
    return reply


async def assert_unauthenticated(client: Client) -> None:
    reply = await exchange(client, MessageType.SNAPSHOT_REQUEST, {}, cid="probe")
    assert reply["type"] == MessageType.ERROR
    assert reply["payload"]["code"] == 403


def jwt_with(claims: dict[str, Any], secret: str | None = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


# -- Heartbeat --------------------------------------------------------------


@pytest.mark.parametrize(
    "client_time",
    [
        1712345678,
        1712345678.25,
        "2024-04-05T12:00:00Z",
        {"ms": 17, "nested": {"list": [1, "two", None, True]}},
        [1, "x", {"y": 2.5}],
        True,
        0,
        None,
    ],
)
async def test_heartbeat_before_auth_echoes_client_time_exactly(
    server: RunningServer, client_time: Any
) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url) as client:
            before = int(time.time())
            reply = await exchange(
                client, MessageType.HEARTBEAT, {"client_time": client_time}, cid="hb-1"
            )
            assert reply["type"] == MessageType.HEARTBEAT_ACK
            payload = reply["payload"]
            assert set(payload) == {"server_time", "client_time"}
            assert payload["client_time"] == client_time
            assert type(payload["client_time"]) is type(client_time)
            assert type(payload["server_time"]) is int
            assert before <= payload["server_time"] <= int(time.time())


async def test_heartbeat_without_client_time_echoes_null(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url) as client:
            reply = await exchange(client, MessageType.HEARTBEAT, {}, cid="empty")
            assert reply["payload"]["client_time"] is None
            no_payload = await exchange(client, MessageType.HEARTBEAT, None, cid="absent")
            assert no_payload["type"] == MessageType.HEARTBEAT_ACK
            assert no_payload["payload"]["client_time"] is None


async def test_heartbeat_burst_of_50_answered_in_order(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, heartbeat_interval=None) as client:
            for i in range(50):
                await client.send_raw(frame(MessageType.HEARTBEAT, {"client_time": i}, cid=f"b{i}"))
            replies = [await client.next_message(timeout=5) for _ in range(50)]
    assert [r["type"] for r in replies] == [MessageType.HEARTBEAT_ACK] * 50
    assert [r["correlation_id"] for r in replies] == [f"b{i}" for i in range(50)]
    assert [r["payload"]["client_time"] for r in replies] == list(range(50))
    times = [r["payload"]["server_time"] for r in replies]
    assert times == sorted(times)


# -- Auth success -----------------------------------------------------------


async def test_auth_success_payload_and_new_token_accepted(server: RunningServer) -> None:
    token = server.token(user="alice", device="phone", session="s-auth")
    with trio.fail_after(BOUND):
        async with open_client(server.url) as client:
            before = int(time.time())
            reply = await exchange(client, MessageType.AUTH, {"token": token}, cid="auth-1")
            assert reply["type"] == MessageType.AUTH_SUCCESS
            payload = reply["payload"]
            new_token = payload["new_token"]
            assert payload == {
                "new_token": new_token,
                "expires_at": payload["expires_at"],
                "device_id": "phone",
                "session_id": "s-auth",
                "user_id": "alice",  # additive field
            }
            assert isinstance(new_token, str)
            assert new_token != token
            assert type(payload["expires_at"]) is int
            assert payload["expires_at"] > before
        async with open_client(server.url) as second:
            again = await exchange(second, MessageType.AUTH, {"token": new_token}, cid="auth-2")
            assert again["type"] == MessageType.AUTH_SUCCESS
            assert again["payload"]["device_id"] == "phone"
            assert again["payload"]["session_id"] == "s-auth"
            snap = await second.snapshot()
            assert snap["session_id"] == "s-auth"


async def test_auth_repeated_on_same_socket_refreshes(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a")) as a,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            first = a.token
            assert first is not None
            second = await a.authenticate(first)
            third = await a.authenticate(second["new_token"])
            assert len({first, second["new_token"], third["new_token"]}) == 3
            assert third["device_id"] == "a"
            version = await a.update("k", "v")
            push = await b.wait_for(MessageType.STATE_UPDATE)
            assert push["payload"]["version"] == version
            # A refresh is not a new arrival: b saw no second DeviceJoined.
            assert [m for m in b.pending() if m["type"] == MessageType.DEVICE_JOINED] == []


async def test_auth_many_sockets_share_one_token(server: RunningServer) -> None:
    token = server.token(device="shared")
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=token) as c1,
            open_client(server.url, token=token) as c2,
            open_client(server.url, token=token) as c3,
            open_client(server.url, token=token) as c4,
        ):
            version = await c1.update("tabs", 4)
            for other in (c2, c3, c4):
                push = await other.wait_for(MessageType.STATE_UPDATE)
                assert push["payload"]["version"] == version
                assert push["device_id"] == "shared"
            listing = await c4.devices()
            assert listing["count"] == 1
            assert listing["devices"][0]["device_id"] == "shared"


# -- Auth failure -----------------------------------------------------------


def _failing_payloads() -> list[Any]:
    now = int(time.time())
    good = {"user_id": "u1", "device_id": "d1", "session_id": "s1", "exp": now + 600}
    no_device = {k: v for k, v in good.items() if k != "device_id"}
    no_exp = {k: v for k, v in good.items() if k != "exp"}
    return [
        pytest.param({}, id="missing-token"),
        pytest.param({"token": None}, id="null-token"),
        pytest.param({"token": 12345}, id="token-not-a-string"),
        pytest.param({"token": ["a", "b"]}, id="token-an-array"),
        pytest.param({"token": ""}, id="empty-token"),
        pytest.param({"token": "not-a-jwt"}, id="malformed"),
        pytest.param({"token": "a.b.c"}, id="malformed-segments"),
        pytest.param({"token": mint(ttl=-60)}, id="expired"),
        pytest.param({"token": mint(secret="another-secret-of-at-least-32-bytes!")}, id="bad-sig"),
        pytest.param({"token": jwt_with(no_device)}, id="missing-device-claim"),
        pytest.param({"token": jwt_with(no_exp)}, id="missing-exp-claim"),
        pytest.param({"token": jwt_with({**good, "session_id": ""})}, id="empty-claim"),
        pytest.param({"token": jwt_with(good, None, "none")}, id="alg-none"),
    ]


@pytest.mark.parametrize("payload", _failing_payloads())
async def test_auth_failure_answers_401_and_keeps_socket(
    server: RunningServer, payload: dict[str, Any]
) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url) as client:
            reply = await exchange(client, MessageType.AUTH, payload, cid="bad-auth")
            assert reply["type"] == MessageType.AUTH_FAILURE
            assert reply["payload"]["code"] == 401
            assert isinstance(reply["payload"]["message"], str)
            assert reply["payload"]["message"]
            assert set(reply["payload"]) <= {"code", "message", "details", "error_code"}
            await assert_unauthenticated(client)
            ack = await client.heartbeat("still-open")
            assert ack["client_time"] == "still-open"
            # The socket can still authenticate afterwards.
            ok = await client.authenticate(server.token())
            assert ok["device_id"] == "d1"


async def test_auth_other_identity_refused_and_original_kept(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a", session="s1")) as a,
            open_client(server.url, token=server.token(device="b", session="s1")) as b,
            open_client(server.url, token=server.token(device="x", session="s2")) as x,
        ):
            await a.wait_for(MessageType.DEVICE_JOINED)
            for intruder in (
                server.token(device="z", session="s2"),
                server.token(device="a", session="s2"),
                server.token(user="u2", device="a", session="s1"),
            ):
                reply = await exchange(a, MessageType.AUTH, {"token": intruder}, cid="switch")
                assert reply["type"] == MessageType.AUTH_FAILURE
                assert reply["payload"]["code"] == 401
            version = await a.update("who", "a")
            push = await b.wait_for(MessageType.STATE_UPDATE)
            assert push["payload"]["version"] == version
            assert (push["session_id"], push["user_id"], push["device_id"]) == ("s1", "u1", "a")
            snap = await a.snapshot()
            assert snap["session_id"] == "s1"
            assert snap["state_data"] == {"who": "a"}
            # Session s2 heard nothing from a.
            await x.heartbeat()
            assert x.pending() == []


# -- 403 before auth --------------------------------------------------------


@pytest.mark.parametrize(
    ("msg_type", "payload"),
    [
        (MessageType.SNAPSHOT_REQUEST, {}),
        (MessageType.STATE_UPDATE, {"key": "k", "value": "v"}),
        (MessageType.STATE_UPDATE, {"key": "k", "operation": "DELETE"}),
        (MessageType.DEVICE_LIST, {}),
    ],
)
async def test_protected_request_before_auth_is_403(
    server: RunningServer, msg_type: int, payload: dict[str, Any]
) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="watcher")) as watcher,
            open_client(server.url) as anonymous,
        ):
            reply = await exchange(anonymous, msg_type, payload, cid="early")
            assert reply["type"] == MessageType.ERROR
            assert reply["payload"] == {
                "code": 403,
                "message": "Not authenticated",
                "error_code": "NOT_AUTHENTICATED",
            }
            ack = await anonymous.heartbeat(7)
            assert ack["client_time"] == 7
            snap = await watcher.snapshot()
            assert snap["version"] == 0
            assert snap["state_data"] == {}
            assert watcher.pending() == []  # no StateUpdate, no DeviceJoined
            assert (await watcher.devices())["count"] == 1
