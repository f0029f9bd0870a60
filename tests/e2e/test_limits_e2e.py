"""End to end: message size (1009), rate limit (429, 4429), Origin allow-list and paths."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from syncbridge.client import Client, Disconnected, open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer

BOUND = 10  # seconds; every test finishes far sooner


def update_frame(value: str, cid: str = "big") -> str:
    message = {"type": 5, "payload": {"key": "blob", "value": value}, "correlation_id": cid}
    return orjson.dumps(message).decode()


# -- message size -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [pytest.param("x" * 2000, id="ascii"), pytest.param("🙂" * 300, id="multibyte-1200-bytes")],
)
async def test_message_over_limit_closes_1009(server_factory: Any, value: str) -> None:
    server: RunningServer = await server_factory(max_message_bytes=1024)
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(device="b")) as b:
            async with open_client(server.url, token=server.token(device="a")) as a:
                await b.wait_for(MessageType.DEVICE_JOINED)
                fits = "y" * 900
                assert len(update_frame(fits).encode()) <= 1024
                await a.send_raw(update_frame(fits, cid="fits"))
                ack = await a.next_message(timeout=5)
                assert (ack["correlation_id"], ack["payload"]["version"]) == ("fits", 1)
                await b.wait_for(MessageType.STATE_UPDATE)
                await a.send_raw(update_frame(value))
                closed = await a.wait_closed()
            assert closed.code == 1009
            left = await b.wait_for(MessageType.DEVICE_LEFT)
            assert left["device_id"] == "a"
            snap = await b.snapshot()
            assert b.pending() == []
    assert snap["state_data"] == {"blob": "y" * 900}
    assert snap["version"] == 1


async def test_message_over_default_512_kib_closes_1009(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(device="a")) as a:
            # Just under the limit is accepted ...
            under = "u" * (500 * 1024)
            await a.send_raw(update_frame(under, cid="under"))
            ack = await a.next_message(timeout=5)
            assert (ack["correlation_id"], ack["payload"]["version"]) == ("under", 1)
            # ... a ~600 KiB frame closes the socket.
            await a.send_raw(update_frame("o" * (600 * 1024)))
            closed = await a.wait_closed()
        assert closed.code == 1009
        async with open_client(server.url, token=server.token(device="b")) as b:
            snap = await b.snapshot()
    assert snap["version"] == 1
    assert snap["state_data"]["blob"] == under


# -- rate limit -----------------------------------------------------------------


def heartbeat_frame(cid: str) -> str:
    return orjson.dumps({"type": 1, "payload": {}, "correlation_id": cid}).decode()


async def test_rate_limit_answers_429_with_correlation_id(server_factory: Any) -> None:
    # A negligible refill rate makes the bucket exactly `rate_burst` messages.
    server: RunningServer = await server_factory(rate_limit=0.001, rate_burst=4)
    with trio.fail_after(BOUND):
        async with open_client(server.url, heartbeat_interval=None) as client:
            for i in range(4):
                await client.send_raw(heartbeat_frame(f"ok{i}"))
            for cid in ("over-1", "over-2"):
                await client.send_raw(heartbeat_frame(cid))
            replies = [await client.next_message(timeout=5) for _ in range(6)]
            assert client.closed is None
    assert [r["type"] for r in replies[:4]] == [MessageType.HEARTBEAT_ACK] * 4
    for reply, cid in zip(replies[4:], ("over-1", "over-2"), strict=True):
        assert reply["type"] == MessageType.ERROR
        assert reply["correlation_id"] == cid
        assert reply["payload"]["code"] == 429
        assert reply["payload"]["error_code"] == "RATE_LIMITED"
        assert isinstance(reply["payload"]["message"], str)


async def flood(client: Client) -> None:
    """Send heartbeats until the server closes the socket (raises Disconnected)."""
    for i in itertools.count():
        await client.send_raw(heartbeat_frame(f"f{i}"))


async def test_rate_limit_persistent_flooding_closes_4429(server_factory: Any) -> None:
    server: RunningServer = await server_factory(rate_limit=0.001, rate_burst=5)
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(device="b")) as b:
            async with open_client(server.url, heartbeat_interval=None) as flooder:
                with pytest.raises(Disconnected):
                    await flood(flooder)
                closed = await flooder.wait_closed()
                received = flooder.pending()
            # Other connections are untouched.
            assert (await b.heartbeat("fine"))["client_time"] == "fine"
    assert closed.code == 4429
    types = [m["type"] for m in received]
    # The burst is answered, then refused with 429 until the fifth refusal in a
    # row closes. Refusals still queued at the close are not flushed, so fewer
    # than 4 may arrive.
    assert types[:5] == [MessageType.HEARTBEAT_ACK] * 5
    assert len(received) <= 5 + 4
    assert all(m["payload"]["error_code"] == "RATE_LIMITED" for m in received[5:])


# -- admission: Origin and path -------------------------------------------------


async def _heartbeat_over(url: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    async with open_websocket_url(url, extra_headers=headers, connect_timeout=5) as ws:
        await ws.send_message(heartbeat_frame("origin-check"))
        reply: dict[str, Any] = orjson.loads(await ws.get_message())
        return reply


async def test_origin_allow_list_admission(server_factory: Any) -> None:
    server: RunningServer = await server_factory(allowed_origins=("https://app.example",))
    with trio.fail_after(BOUND):
        no_origin = await _heartbeat_over(server.url, [])
        allowed = await _heartbeat_over(server.url, [(b"Origin", b"https://app.example")])
        with pytest.raises(ConnectionRejected) as refused:
            await _heartbeat_over(server.url, [(b"Origin", b"https://evil.example")])
        async with open_client(server.url, token=server.token()) as client:
            assert (await client.snapshot())["version"] == 0
    assert no_origin["type"] == allowed["type"] == MessageType.HEARTBEAT_ACK
    assert refused.value.status_code == 403
    assert server.app.active_connections <= 1


async def test_origin_any_accepted_without_allow_list(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        reply = await _heartbeat_over(server.url, [(b"Origin", b"https://anywhere.example")])
    assert reply["type"] == MessageType.HEARTBEAT_ACK


@pytest.mark.parametrize("path", ["/nope", "/ws/extra", "/"])
async def test_unknown_websocket_path_refused_404(server: RunningServer, path: str) -> None:
    url = server.url.removesuffix("/ws") + path
    with trio.fail_after(BOUND), pytest.raises(ConnectionRejected) as refused:
        await _heartbeat_over(url, [])
    assert refused.value.status_code == 404
    assert refused.value.body is not None
    assert b"/ws" in refused.value.body
