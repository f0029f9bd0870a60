"""Operator routes: /metrics (parsed by prometheus-client's own parser), /debug, /admin."""

from __future__ import annotations

from typing import Any

import orjson
import trio
from prometheus_client.parser import text_string_to_metric_families

from syncbridge.client import open_client
from syncbridge.protocol.messages import MessageType

from .conftest import RunningServer, mint

BOUND = 20


async def http_get(base: str, path: str, token: str | None = None) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET over a real socket."""
    host, _, port = base.removeprefix("http://").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def admin_token() -> str:
    return mint(user="ops", device="cli", session="ops", roles=("admin",))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_are_scraped_by_a_prometheus_parser(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="a")) as a,
            open_client(server.url, token=server.token(device="b")) as b,
        ):
            await a.update("k", 1)
            await b.wait_for(MessageType.STATE_UPDATE)
            await a.send_raw("not json")
            await a.wait_for(MessageType.ERROR)
            status, body = await http_get(server.http, "/metrics", admin_token())
    assert status == 200
    found = samples(body.decode())
    assert found[("syncbridge_active_connections", ())] == 2
    assert found[("syncbridge_authenticated_connections", ())] == 2
    assert found[("syncbridge_sessions_local", ())] == 1
    assert found[("syncbridge_messages_received_total", (("type", "STATE_UPDATE"),))] == 1
    assert found[("syncbridge_messages_received_total", (("type", "INVALID"),))] == 1
    assert found[("syncbridge_messages_sent_total", (("type", "STATE_UPDATE"),))] == 2
    assert found[("syncbridge_errors_total", (("code", "INVALID_MESSAGE"),))] == 1
    assert found[("syncbridge_update_seconds_count", ())] == 1
    assert found[("syncbridge_store_operation_seconds_count", (("operation", "apply"),))] == 1
    assert "syncbridge_slow_consumer_disconnects_total" in {name for name, _ in found}


async def test_metrics_count_auth_failures_and_close_codes(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url) as c:
            await c.send({"type": MessageType.AUTH, "payload": {"token": "bad"}})
            await c.wait_for(MessageType.AUTH_FAILURE)
        await server.app.wait_no_connections()
        status, body = await http_get(server.http, "/metrics", admin_token())
    assert status == 200
    found = samples(body.decode())
    assert found[("syncbridge_auth_failures_total", (("reason", "malformed"),))] == 1
    closed = {
        labels: v
        for (name, labels), v in found.items()
        if name == "syncbridge_connections_closed_total"
    }
    assert sum(closed.values()) == 1


async def test_operator_routes_need_a_token_with_the_right_role(server: RunningServer) -> None:
    user = mint(user="u", device="d", session="s")
    metrics_only = mint(user="prom", device="scraper", session="ops", roles=("metrics",))
    with trio.fail_after(BOUND):
        for path in (
            "/metrics",
            "/debug/tasks",
            "/debug/profile?seconds=0.1",
            "/admin/sessions",
            "/admin/connections",
        ):
            assert (await http_get(server.http, path))[0] == 401
            assert (await http_get(server.http, path, "not-a-jwt"))[0] == 401
            assert (await http_get(server.http, path, user))[0] == 403
        assert (await http_get(server.http, "/metrics", metrics_only))[0] == 200
        assert (await http_get(server.http, "/debug/tasks", metrics_only))[0] == 403
        wrong_secret = mint(
            user="ops",
            device="cli",
            session="ops",
            roles=("admin",),
            secret="another-secret-that-is-32-bytes-long!!",
        )
        assert (await http_get(server.http, "/metrics", wrong_secret))[0] == 401


async def test_task_dump_counts_connection_tasks(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token()):
            status, body = await http_get(server.http, "/debug/tasks?format=json", admin_token())
            text_status, text = await http_get(server.http, "/debug/tasks", admin_token())
    assert status == 200
    dump: dict[str, Any] = orjson.loads(body)
    assert dump["by_name"]["connection.read"] >= 1
    assert dump["by_name"]["connection.write"] >= 1
    assert dump["total"] >= 4
    assert text_status == 200
    assert b"connection.write" in text


async def test_cpu_profile_for_a_short_time(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        status, body = await http_get(server.http, "/debug/profile?seconds=0.2", admin_token())
        bad, _ = await http_get(server.http, "/debug/profile?seconds=600", admin_token())
    assert status == 200
    assert b"Duration" in body or b"Recorded" in body
    assert bad == 400


async def test_admin_lists_sessions_and_connections(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(session="s9", device="a")):
            _, sessions = await http_get(server.http, "/admin/sessions", admin_token())
            _, connections = await http_get(server.http, "/admin/connections", admin_token())
    assert orjson.loads(sessions) == {
        "count": 1,
        "sessions": [{"session_id": "s9", "connections": 1}],
    }
    listed = orjson.loads(connections)
    assert listed["count"] == 1
    assert listed["connections"][0]["device_id"] == "a"
    assert "token" not in connections.decode()


async def test_admin_addr_moves_operator_routes_off_the_public_port(server_factory: Any) -> None:
    server: RunningServer = await server_factory(admin_addr="127.0.0.1:0")
    admin = server.info.admin_url
    assert admin is not None
    with trio.fail_after(BOUND):
        assert (await http_get(server.http, "/metrics", admin_token()))[0] == 404
        assert (await http_get(server.http, "/debug/tasks", admin_token()))[0] == 404
        assert (await http_get(admin, "/metrics", admin_token()))[0] == 200
        assert (await http_get(admin, "/metrics"))[0] == 401
        assert (await http_get(admin, "/health"))[0] == 200
        assert (await http_get(server.http, "/health"))[0] == 200
