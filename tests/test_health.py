"""health(app, scope): the public status, and the full document for operator tokens.

Over real sockets the details are served on /health/details
(tests/e2e_redis/test_health_surface_e2e.py); this checks the function app.py
calls for /health, with the request's scope, against a real app.
"""

from __future__ import annotations

from syncbridge.app import SyncBridgeApp
from syncbridge.http.health import health

from .conftest import make_settings, mint


def scope_with(token: str | None) -> dict[str, object]:
    headers = [(b"host", b"localhost")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {"type": "http", "path": "/health", "headers": headers}


async def test_health_without_scope_or_operator_token_is_status_only() -> None:
    app = SyncBridgeApp(make_settings())
    assert await health(app) == (200, {"status": "ok"})
    for token in (None, mint(), mint(roles=("service",)), "garbage"):
        assert await health(app, scope_with(token)) == (200, {"status": "ok"})


async def test_health_with_operator_token_is_the_full_document() -> None:
    app = SyncBridgeApp(make_settings())
    for role in ("admin", "metrics"):
        status, body = await health(app, scope_with(mint(roles=(role,))))
        assert status == 200
        assert body["store"]["backend"] == "memory"
        assert {"version", "uptime_seconds", "active_connections", "sessions"} <= set(body)
