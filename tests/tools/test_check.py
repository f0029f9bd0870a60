"""``python -m syncbridge check`` against real servers: healthy, misconfigured and down."""

from __future__ import annotations

import io
import os
import socket
import sys
from pathlib import Path
from typing import Any

import trio

from syncbridge.errors import StoreUnavailable
from syncbridge.settings import Settings, iter_options, load_settings
from syncbridge.store.memory import MemoryStore
from syncbridge.tools.check import STEPS, CheckReport, default_url, run_check

from ..conftest import SECRET, RunningServer, make_settings, start_server
from ..e2e_redis import open_servers, redis_settings
from ..redis_harness import open_redis_server

BOUND = 15  # seconds; every check finishes far sooner
WS_STEPS = STEPS[2:]


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def check_settings(secret: str = SECRET) -> Settings:
    """The settings an operator's shell would have: the service's JWT_SECRET."""
    return load_settings(environ={"JWT_SECRET": secret})


async def check(url: str, **kw: Any) -> tuple[CheckReport, str]:
    """Run the check in-process; return its report and everything it printed."""
    out = io.StringIO()
    kw.setdefault("settings", check_settings())
    with trio.fail_after(BOUND):
        report = await run_check(url, out=out, timeout=5.0, **kw)
    return report, out.getvalue()


def verdicts(report: CheckReport) -> dict[str, str]:
    return {r.name: r.verdict for r in report.results}


class UnreachableStore(MemoryStore):
    """A store whose backend is gone: pings and writes fail as Redis's would."""

    name = "redis"

    async def ping(self) -> float:
        raise StoreUnavailable("store unavailable: ping failed (Connection refused)")

    async def apply(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable(
            "store unavailable: apply failed "
            "(OOM command not allowed when used memory > 'maxmemory')"
        )


async def test_check_healthy_server_passes_every_step(server: RunningServer) -> None:
    report, text = await check(server.http)
    assert report.passed
    assert [r.name for r in report.results] == list(STEPS)
    lines = text.splitlines()
    for name in STEPS:
        assert any(line.startswith(f"PASS {name} ") for line in lines), text
    assert "200 ok" in text
    assert "store memory ok" in text
    assert lines[-1] == f"OK: all {len(STEPS)} steps passed"
    assert "->" not in text  # no resolution printed when nothing failed


async def test_check_removes_the_key_it_wrote(server: RunningServer) -> None:
    report, _ = await check(server.http)
    assert report.session_id.startswith("syncbridge-check-")
    snapshot = await server.app.store.snapshot(report.session_id)
    assert snapshot.state == {}
    assert snapshot.version == 2  # written once, deleted once


async def test_check_wrong_secret_fails_at_ws_auth_with_secret_advice(
    server_factory: Any,
) -> None:
    other = await server_factory(jwt_secret="a-different-secret-that-is-32-bytes-long")
    report, text = await check(other.http)
    assert not report.passed
    assert verdicts(report) == {
        "health": "PASS",
        "store": "PASS",
        "ws-connect": "PASS",
        "ws-auth": "FAIL",
        "ws-heartbeat": "PASS",  # heartbeats need no authentication
        "ws-snapshot": "SKIP",
        "ws-broadcast": "SKIP",
        "ws-cleanup": "SKIP",
    }
    assert "FAIL ws-auth" in text
    assert "AuthFailure 401: token signature is invalid" in text
    assert "Service and tests must use the same JWT_SECRET" in text
    assert text.splitlines()[-1].startswith("FAILED: ws-auth")


async def test_check_closed_port_fails_at_health_with_listening_advice() -> None:
    port = free_port()
    report, text = await check(f"http://127.0.0.1:{port}")
    assert not report.passed
    assert verdicts(report) == {"health": "FAIL", **dict.fromkeys(STEPS[1:], "SKIP")}
    assert f"FAIL health       connection refused by 127.0.0.1:{port}" in text
    assert f"Is the service listening? `ss -tlnp | grep {port}`" in text
    assert "start it with `python -m syncbridge`" in text


async def test_check_https_to_a_plain_http_port_names_tls(server: RunningServer) -> None:
    report, text = await check(server.http.replace("http://", "https://"))
    assert verdicts(report)["health"] == "FAIL"
    assert "TLS handshake with 127.0.0.1:" in text
    assert "ssl_certificate" in text


async def test_check_without_secret_fails_at_ws_auth(server: RunningServer) -> None:
    report, text = await check(server.http, settings=load_settings(environ={}))
    assert verdicts(report)["ws-auth"] == "FAIL"
    assert "JWT_SECRET is not set and no try-out server" in text
    assert "pass --token" in text


async def test_check_with_external_token_passes_in_that_session(server: RunningServer) -> None:
    token = server.token(user="ops", device="ops-laptop", session="ops-session")
    report, text = await check(server.http, settings=load_settings(environ={}), token=token)
    assert report.passed, text
    assert "joined session ops-session" in text
    # Without JWT_SECRET no operator token: /health gives the status only.
    assert "PASS store        ok (backend and latency are shown to operator tokens" in text
    snapshot = await server.app.store.snapshot("ops-session")
    assert snapshot.state == {}  # the check's key is gone again


async def test_check_unreachable_store_fails_health_and_store_with_redis_advice(
    nursery: trio.Nursery,
) -> None:
    settings = make_settings()
    store = UnreachableStore(
        session_ttl=settings.session_ttl,
        history_size=settings.history_size,
        max_state_bytes=settings.max_state_bytes,
        max_keys=settings.max_keys,
    )
    degraded = await start_server(nursery, settings, store=store)
    report, text = await check(degraded.http)
    assert verdicts(report) == {
        "health": "FAIL",
        "store": "FAIL",
        "ws-connect": "PASS",
        "ws-auth": "PASS",
        "ws-heartbeat": "PASS",
        "ws-snapshot": "PASS",
        "ws-broadcast": "FAIL",
        "ws-cleanup": "SKIP",
    }
    assert "FAIL health       503 degraded" in text
    assert "store redis unavailable" in text
    assert "FAIL store        redis unavailable: store unavailable: ping failed" in text
    assert "Redis connection: `redis-cli ping` should return PONG" in text
    assert "Error 503 STORE_UNAVAILABLE" in text
    assert "Redis memory full" in text
    degraded.stop.set()


async def test_check_wrong_websocket_path_fails_at_ws_connect(server: RunningServer) -> None:
    report, text = await check(server.http, ws_url=server.url + "-nope")
    assert verdicts(report)["ws-connect"] == "FAIL"
    assert all(verdicts(report)[name] == "SKIP" for name in WS_STEPS[1:])
    assert "WebSocket upgrade refused with HTTP 404" in text
    assert "proxy_http_version 1.1" in text


def shipped_redis_args() -> list[str]:
    """config/redis-syncbridge.conf as redis-server command-line options."""
    conf = Path(__file__).resolve().parents[2] / "config" / "redis-syncbridge.conf"
    args: list[str] = []
    for line in conf.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            args += [f"--{name}", *value.split()]
    return args


async def test_check_on_full_redis_reports_memory_advice(tmp_path: Path) -> None:
    """With the shipped fragment (noeviction), a full Redis refuses writes loudly."""
    async with open_redis_server(tmp_path / "redis", extra_args=shipped_redis_args()) as redis:
        assert "noeviction" in await redis.cli("config", "get", "maxmemory-policy")
        async with open_servers(redis_settings(redis.url)) as [on_redis]:
            healthy, healthy_text = await check(on_redis.http)
            await redis.cli("config", "set", "maxmemory", "1")
            full, text = await check(on_redis.http)
    assert healthy.passed, healthy_text
    assert "PASS store        redis ok" in healthy_text
    assert not full.passed
    assert "OOM command not allowed" in text
    assert "Redis memory full" in text


def test_check_default_url_follows_server_addr() -> None:
    assert default_url(load_settings(environ={})) == "http://localhost:8080"
    assert (
        default_url(load_settings(environ={"SERVER_ADDR": "127.0.0.1:9000"}))
        == "http://127.0.0.1:9000"
    )
    assert default_url(load_settings(environ={"SERVER_ADDR": "[::1]:9000"})) == (
        "http://[::1]:9000"
    )


def child_env(**extra: str) -> dict[str, str]:
    """This environment without SyncBridge settings, plus ``extra``."""
    ours = {o.metadata["env"] for o in iter_options()} | {"SYNCBRIDGE_CONFIG"}
    return {**{k: v for k, v in os.environ.items() if k not in ours}, **extra}


async def test_check_command_exit_status(server: RunningServer) -> None:
    command = [sys.executable, "-m", "syncbridge", "check", "--url", server.http]
    with trio.fail_after(BOUND):
        good = await trio.run_process(
            command, capture_stdout=True, check=False, env=child_env(JWT_SECRET=SECRET)
        )
        bad = await trio.run_process(
            command,
            capture_stdout=True,
            check=False,
            env=child_env(JWT_SECRET="not-the-servers-secret-but-32-bytes-long"),
        )
    assert good.returncode == 0, good.stdout.decode()
    assert good.stdout.decode().splitlines()[-1] == f"OK: all {len(STEPS)} steps passed"
    assert bad.returncode == 1
    assert "FAIL ws-auth" in bad.stdout.decode()
