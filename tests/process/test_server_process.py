"""The real server process: ``python -m syncbridge`` on a free port, driven from outside."""

from __future__ import annotations

import signal
import time

import orjson
import trio

import syncbridge
from syncbridge.auth import TokenAuthority
from syncbridge.client import Client, open_client
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from .proc import ServerProcess, http_get, http_get_json, run_server

SECRET = "process-test-secret-at-least-32-bytes-long"
SHUTDOWN_TIMEOUT = 3.0
# Shutdown may take up to SHUTDOWN_TIMEOUT, then interpreter exit: allow a margin.
EXIT_BOUND = SHUTDOWN_TIMEOUT + 3.0
ENV = {"JWT_SECRET": SECRET, "SHUTDOWN_TIMEOUT": f"{SHUTDOWN_TIMEOUT}s"}
# hypercorn's per-socket ping task sleeps a whole ping interval after the socket
# has closed, and shutdown waits for it (up to its 2 s grace). A short interval
# keeps tests that had a WebSocket fast; the signal tests keep the default.
FAST = {"PING_INTERVAL": "0.2s"}


def mint(device: str, session: str = "s1", roles: tuple[str, ...] = ()) -> str:
    token, _ = TokenAuthority(SECRET).mint(
        user_id="u1", device_id=device, session_id=session, ttl=600, now=time.time(), roles=roles
    )
    return token


def metrics_token() -> str:
    return mint("ops", session="ops", roles=("metrics",))


def assert_no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in server.stderr_text, server.stderr_text
    assert not any(" ERROR " in line for line in server.stderr), server.stderr_text


async def test_server_process_health_document() -> None:
    async with run_server(env=ENV) as server:
        # Public: the status only (issue 12, item 10).
        assert await http_get_json(server.port, "/health") == (200, {"status": "ok"})
        status, body = await http_get_json(server.port, "/health/details", token=metrics_token())
        assert status == 200
        assert body["status"] == "ok"
        assert body["version"] == syncbridge.__version__
        assert isinstance(body["uptime_seconds"], int | float)
        assert body["uptime_seconds"] >= 0
        assert body["active_connections"] == 0
        assert body["sessions"] == 0
        assert body["store"]["backend"] == "memory"
        assert body["store"]["status"] == "ok"
        assert await server.stop() == 0
    assert_no_traceback(server)


async def test_server_process_health_counts_connections() -> None:
    async with (
        run_server(env={**ENV, **FAST}) as server,
        open_client(server.ws_url, token=mint("a"), heartbeat_interval=None),
    ):
        _, body = await http_get_json(server.port, "/health/details", token=metrics_token())
        assert body["active_connections"] == 1
        assert body["sessions"] == 1


async def test_server_process_routes() -> None:
    async with run_server(env=ENV) as server:
        live_status, live = await http_get_json(server.port, "/health/live")
        ready_status, ready = await http_get_json(server.port, "/health/ready")
        ws_status, _ = await http_get(server.port, "/ws")
        missing_status, missing = await http_get_json(server.port, "/no/such/page")
        assert live_status == 200
        assert live == {"status": "alive"}
        assert ready_status == 200
        assert ready["status"] == "ready"
        assert ws_status == 426
        assert missing_status == 404
        assert "/no/such/page" in missing["error"]


async def test_server_process_without_secret_prints_working_demo_token() -> None:
    async with run_server(env=FAST) as server:
        token = server.banner_token()
        async with open_client(server.ws_url, heartbeat_interval=None) as client:
            auth = await client.authenticate(token)
            assert auth["session_id"] == "demo"
            snap = await client.snapshot()
            assert snap["session_id"] == "demo"
        assert await server.stop() == 0
    warnings = [line for line in server.stderr if "WARNING" in line]
    assert any("JWT_SECRET" in line for line in warnings), server.stderr_text
    assert token not in server.stderr_text


async def test_server_process_with_secret_prints_no_token() -> None:
    async with run_server(env=ENV) as server:
        banner = "\n".join(server.banner)
        assert "try-out token" not in banner
        assert "python -m syncbridge token" in banner
        assert await server.stop() == 0
    assert not any("WARNING" in line for line in server.stderr), server.stderr_text


async def test_server_process_relays_update_between_two_clients() -> None:
    async with (
        run_server(env={**ENV, **FAST}) as server,
        open_client(server.ws_url, token=mint("a"), heartbeat_interval=None) as a,
        open_client(server.ws_url, token=mint("b"), heartbeat_interval=None) as b,
    ):
        version = await a.update("theme", "dark")
        push = await b.wait_for(MessageType.STATE_UPDATE, timeout=5)
        assert push["payload"]["key"] == "theme"
        assert push["payload"]["value"] == "dark"
        assert push["payload"]["version"] == version
        assert push["device_id"] == "a"
        snap = await b.snapshot()
        assert snap["state_data"] == {"theme": "dark"}


async def _stop_with_two_clients(sig: int) -> tuple[ServerProcess, int, list[int | None]]:
    """Connect two clients, send ``sig``; return the exit status and both close codes."""
    codes: list[int | None] = []

    async def watch(client: Client) -> None:
        closed = await client.wait_closed(timeout=EXIT_BOUND)
        codes.append(closed.code)

    async with (
        run_server(env=ENV) as server,
        open_client(server.ws_url, token=mint("a"), heartbeat_interval=None) as a,
        open_client(server.ws_url, token=mint("b"), heartbeat_interval=None) as b,
    ):
        await a.wait_for(MessageType.DEVICE_JOINED, timeout=5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, a)
            nursery.start_soon(watch, b)
            status = await server.stop(sig, timeout=EXIT_BOUND)
    return server, status, codes


async def test_server_process_sigterm_closes_clients_1001_and_exits_0() -> None:
    server, status, codes = await _stop_with_two_clients(signal.SIGTERM)
    assert codes == [CloseCode.GOING_AWAY, CloseCode.GOING_AWAY]
    assert status == 0
    assert_no_traceback(server)
    assert any("SIGTERM" in line for line in server.stderr)


async def test_server_process_sigint_closes_clients_1001_and_exits_0() -> None:
    server, status, codes = await _stop_with_two_clients(signal.SIGINT)
    assert codes == [CloseCode.GOING_AWAY, CloseCode.GOING_AWAY]
    assert status == 0
    assert_no_traceback(server)
    assert any("SIGINT" in line for line in server.stderr)


async def test_server_process_debug_log_shows_messages_never_tokens() -> None:
    token = mint("a")
    async with run_server(env={**ENV, **FAST, "LOG_LEVEL": "debug"}) as server:
        async with open_client(server.ws_url, token=token, heartbeat_interval=None) as client:
            await client.heartbeat()
            await client.update("k", "v")
            refreshed = client.token
        assert await server.stop() == 0
    text = server.stderr_text
    assert "<- AUTH" in text
    assert "<- HEARTBEAT" in text
    assert "<- STATE_UPDATE" in text
    assert token not in text
    assert refreshed is not None
    assert refreshed not in text
    assert SECRET not in text


async def test_server_process_json_logs_every_line_is_json() -> None:
    async with run_server(
        env={**ENV, **FAST, "LOG_FORMAT": "json", "LOG_LEVEL": "debug"}
    ) as server:
        async with open_client(server.ws_url, token=mint("a"), heartbeat_interval=None) as client:
            await client.heartbeat()
        assert await server.stop() == 0
    assert len(server.stderr) >= 4
    entries = [orjson.loads(line) for line in server.stderr]
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= entry.keys()
    levels = {entry["level"] for entry in entries}
    assert {"debug", "info"} <= levels
    assert any("listening on" in entry["message"] for entry in entries)
