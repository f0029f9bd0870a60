"""The /ws engine over real sockets: pings, liveness, token expiry, tasks, closes, routing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from syncbridge.client import open_client
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer
from ..raw_ws import open_raw_client

ServerFactory = Callable[..., Awaitable[RunningServer]]
BOUND = 15  # seconds; every test finishes far sooner


def connection_tasks() -> dict[str, int]:
    """Live tasks named ``connection.*``, counted by name."""
    counts: dict[str, int] = {}

    def walk(task: trio.lowlevel.Task) -> None:
        if task.name.startswith("connection."):
            counts[task.name] = counts.get(task.name, 0) + 1
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return counts


async def auth(client: Any, token: str) -> None:
    await client.send_json({"type": 7, "payload": {"token": token}, "correlation_id": "a"})
    reply = await client.next_message()
    assert reply is not None
    assert reply["type"] == MessageType.AUTH_SUCCESS, reply


async def test_engine_first_ping_one_interval_after_accept_and_unanswered_closes_4001(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(ping_interval=0.3, liveness_timeout=1.2)
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            opened = trio.current_time()
            await auth(client, server.token())
            client.answer_pings = False  # a peer that sends nothing and answers nothing
            assert await client.wait_closed() == CloseCode.LIVENESS_TIMEOUT
            closed = trio.current_time()
    assert client.pings, "pings were sent before the deadline"
    assert client.pings[0] - opened >= 0.3 - 0.05  # never at accept
    assert closed - opened >= 1.2 - 0.05


async def test_engine_answered_pings_keep_a_silent_socket_open_past_liveness(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(ping_interval=0.1, liveness_timeout=0.5)
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            await auth(client, server.token())
            started = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    await client.next_frame()  # returns only on a message or the close
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read)
                while len(client.pings) < 12 and not nursery.cancel_scope.cancel_called:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                nursery.cancel_scope.cancel()
            assert client.close_code is None
            assert trio.current_time() - started > 0.5  # past LIVENESS_TIMEOUT, still open
            await client.send_json({"type": 1, "payload": {}, "correlation_id": "hb"})
            ack = await client.next_message()
            assert ack is not None
            assert ack["type"] == MessageType.HEARTBEAT_ACK


async def test_engine_token_expiry_closes_4401_on_a_real_socket(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(token_ttl=1.5)  # AuthSuccess's new_token lifetime
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            await auth(client, server.token())
            assert await client.wait_closed() == CloseCode.TOKEN_EXPIRED
    assert "expired" in client.close_reason


async def test_engine_connection_is_three_tasks_and_none_after_close(
    server: RunningServer,
) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            await client.snapshot()
            assert connection_tasks() == {
                "connection.read": 1,
                "connection.write": 1,
                "connection.heartbeat": 1,
            }
        await server.app.wait_no_connections()
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert connection_tasks() == {}


@pytest.mark.parametrize("code", [1000, 1001, 4321])
async def test_engine_client_close_code_is_recorded_truthfully(
    server: RunningServer, code: int
) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            (connection,) = server.app.connections.values()
            await client.aclose(code, "bye")
        await server.app.wait_no_connections()
    assert (connection.peer_close_code, connection.close_code) == (code, None)
    metrics = server.app.metrics.render().decode()
    assert f'syncbridge_connections_closed_total{{by="client",code="{code}"}} 1.0' in metrics


async def test_engine_oversize_message_closes_1009_as_the_servers_close(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(max_message_bytes=1024)
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            (connection,) = server.app.connections.values()
            await client.send_text("x" * 2000)
            assert await client.wait_closed() == CloseCode.MESSAGE_TOO_BIG
        await server.app.wait_no_connections()
    assert (connection.close_code, connection.peer_close_code) == (1009, None)


async def test_engine_handshake_refused_503_with_body_while_draining(
    server: RunningServer,
) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()) as client:
            server.app.draining = True  # what drain() sets first
            status, body = await raw_request(
                server,
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n",
            )
            assert status == 503
            assert orjson.loads(body) == {"error": "server is shutting down; reconnect shortly"}
            _status, health = await raw_request(
                server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert orjson.loads(health)["status"] == "draining"
            server.app.draining = False
            await client.snapshot()  # the open socket was not affected


async def raw_request(server: RunningServer, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes; the status and body of the response (read to the close)."""
    host, port = server.http.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
            head, sep, rest = response.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    break
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_engine_plain_get_of_ws_path_answers_426(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        status, body = await raw_request(
            server, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert status == 426
    assert b"upgrade required" in body


async def test_engine_non_http_bytes_answered_400_at_once(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        status, _body = await raw_request(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert status == 400


async def test_engine_oversize_request_head_answered_431(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        status, _body = await raw_request(
            server, b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        )
    assert status == 431


async def test_engine_slow_request_head_closed_at_handshake_timeout(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(handshake_timeout=0.5)
    host, port = server.http.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(BOUND):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            started = trio.current_time()
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert await stream.receive_some(1024) == b""  # closed by the server
            assert trio.current_time() - started >= 0.5 - 0.05


async def test_engine_h2c_prior_knowledge_refused_by_default(server: RunningServer) -> None:
    host, port = server.http.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(BOUND):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert await stream.receive_some(1024) == b""  # closed without an answer


async def test_engine_h2c_upgrade_ignored_by_default(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        status, body = await raw_request(
            server,
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
    assert status == 200  # served as HTTP/1.1, not 101 Switching Protocols
    assert orjson.loads(body) == {"status": "alive"}


async def test_engine_refused_origin_answered_403_with_body(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(allowed_origins=("https://app.example",))
    with trio.fail_after(BOUND):
        status, body = await raw_request(
            server,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Origin: https://evil.example\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
        )
        assert (status, orjson.loads(body)) == (403, {"error": "origin not allowed"})
        async with open_raw_client(server.url, origin="https://app.example") as client:
            await auth(client, server.token())


async def test_engine_frame_sent_with_the_handshake_is_not_lost(server: RunningServer) -> None:
    # RFC 6455 asks clients to wait for the 101, but a frame may arrive in the same
    # segment as the handshake: it is read from the same buffer, in order.
    import base64
    import os

    from websockets.frames import Frame, Opcode

    auth = orjson.dumps(
        {"type": 7, "payload": {"token": server.token()}, "correlation_id": "early"}
    )
    frame = Frame(Opcode.TEXT, auth).serialize(mask=True)
    key = base64.b64encode(os.urandom(16))
    head = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    host, port = server.http.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(BOUND):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(head + frame)
            received = b""
            while b'"early"' not in received:
                chunk = await stream.receive_some(65536)
                assert chunk, received
                received += chunk
    assert received.startswith(b"HTTP/1.1 101")
    assert b'"type":8' in received  # AuthSuccess for the frame that came with the head


async def test_engine_fragmented_message_is_assembled(server: RunningServer) -> None:
    message = orjson.dumps(
        {"type": 1, "payload": {"client_time": "x" * 300}, "correlation_id": "f"}
    )
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            client.protocol.send_text(message[:100], fin=False)
            client.protocol.send_continuation(message[100:200], fin=False)
            client.protocol.send_continuation(message[200:], fin=True)
            await client._flush()
            ack = await client.next_message()
    assert ack is not None
    assert (ack["type"], ack["correlation_id"]) == (MessageType.HEARTBEAT_ACK, "f")


async def test_engine_oversize_across_fragments_closes_1009(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(max_message_bytes=1000)
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            # 3 x 400 bytes: each frame fits, the message does not.
            client.protocol.send_text(b"x" * 400, fin=False)
            client.protocol.send_continuation(b"x" * 400, fin=False)
            client.protocol.send_continuation(b"x" * 400, fin=True)
            await client._flush()
            assert await client.wait_closed() == CloseCode.MESSAGE_TOO_BIG


async def test_engine_binary_json_message_is_accepted(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            client.protocol.send_binary(orjson.dumps({"type": 1, "correlation_id": "b"}))
            await client._flush()
            ack = await client.next_message()
    assert ack is not None
    assert ack["correlation_id"] == "b"


async def test_engine_invalid_utf8_text_closes_1007(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            (connection,) = server.app.connections.values()
            client.protocol.send_text(b'{"type":1,"correlation_id":"\xff"}')
            await client._flush()
            assert await client.wait_closed() == 1007
        await server.app.wait_no_connections()
    assert connection.close_code == 1007


async def test_engine_answers_the_clients_ping(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            client.protocol.send_ping(b"are you there")
            await client._flush()
            frame = await client.next_frame()
    assert frame is not None
    assert (frame.opcode.name, frame.data) == ("PONG", b"are you there")


async def test_engine_close_without_a_code_is_recorded_as_1005(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url) as client:
            (connection,) = server.app.connections.values()
            client.protocol.send_close()
            await client._flush()
            await client.wait_closed()
        await server.app.wait_no_connections()
    assert (connection.peer_close_code, connection.close_code) == (1005, None)


async def test_engine_large_snapshot_goes_out_whole_through_partial_writes(
    server: RunningServer,
) -> None:
    big = "y" * 300_000
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(device="w")) as writer:
            for key in ("a", "b", "c"):
                await writer.update(key, big)
        async with open_client(server.url, token=server.token(device="r")) as reader:
            snapshot = await reader.snapshot()  # ~900 KB in one frame
    assert snapshot["state_data"] == {"a": big, "b": big, "c": big}


async def test_engine_upgrade_on_a_kept_alive_http_connection_is_refused_400(
    server: RunningServer,
) -> None:
    host, port = server.http.removeprefix("http://").rsplit(":", 1)
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(BOUND):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            first = b""
            while b'"alive"' not in first:
                first += await stream.receive_some(65536)
            await stream.send_all(upgrade)
            second = b""
            while b"new HTTP/1.1 connection" not in second:
                chunk = await stream.receive_some(65536)
                assert chunk, second
                second += chunk
    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 400")


async def test_engine_h2c_prior_knowledge_served_when_configured(
    server_factory: ServerFactory,
) -> None:
    import httpx

    server = await server_factory(http2_cleartext=True)
    with trio.fail_after(BOUND):
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            response = await client.get(f"{server.http}/health/live")
    assert response.http_version == "HTTP/2"
    assert response.json() == {"status": "alive"}


@pytest.mark.parametrize("configured", [False, True])
async def test_engine_permessage_deflate_only_when_configured(
    server_factory: ServerFactory, configured: bool
) -> None:
    server = await server_factory(ws_deflate=configured)
    big = "z" * 20_000  # compresses well: the frames on the wire are small when on
    with trio.fail_after(BOUND):
        async with open_raw_client(server.url, deflate=True) as client:
            assert client.response is not None
            offered = client.response.headers.get("Sec-WebSocket-Extensions")
            await auth(client, server.token())
            await client.send_json(
                {"type": 5, "payload": {"key": "k", "value": big}, "correlation_id": "u"}
            )
            ack = await client.next_message()
    assert (offered is not None) is configured
    if configured:
        assert offered.startswith("permessage-deflate")
    assert ack is not None
    assert ack["payload"]["value"] == big
