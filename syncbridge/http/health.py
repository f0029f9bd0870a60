"""``/health``, ``/health/live``, ``/health/ready`` and ``/health/details``.

The first three need no token and say only what probes need: the status and
its HTTP code. Everything else (version, uptime, connection and session counts,
the store's address, latency and error) describes the deployment to whoever
asks, so it is served by :func:`health_details` to operator tokens only
(admin or metrics role): on ``/health/details``, and on ``/health`` itself
when the caller passes the request's scope with such a token.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import trio

from syncbridge import __version__
from syncbridge.errors import StoreUnavailable
from syncbridge.store.base import Store

__all__ = ["HealthSource", "health", "health_details", "readiness"]

_STORE_PING_TIMEOUT = 2.0

Scope = dict[str, Any]


class OperatorCheck(Protocol):
    """Who may see details: implemented by the operator routes."""

    def is_operator(self, scope: Scope) -> bool:
        """Whether the request carries a valid token with an operator role."""
        ...


class HealthSource(Protocol):
    """What the health endpoints read from the running app."""

    store: Store
    started_at: float
    draining: bool

    @property
    def admin(self) -> OperatorCheck:
        """The operator routes, which verify operator tokens."""
        ...

    @property
    def active_connections(self) -> int:
        """Open WebSocket connections."""
        ...

    @property
    def authenticated_connections(self) -> int:
        """Open WebSocket connections that have authenticated."""
        ...

    @property
    def session_count(self) -> int:
        """Sessions with a device connected to this process."""
        ...


async def _store_status(store: Store) -> dict[str, Any]:
    status: dict[str, Any] = {"backend": store.name}
    target = getattr(store, "target", None)
    if target:
        status["address"] = target
    try:
        with trio.fail_after(_STORE_PING_TIMEOUT):
            latency = await store.ping()
    except (StoreUnavailable, trio.TooSlowError) as exc:
        status.update(status="unavailable", error=str(exc) or "ping timed out")
    else:
        status.update(status="ok", latency_ms=round(latency * 1000, 3))
    return status


async def health_details(app: HealthSource) -> tuple[int, dict[str, Any]]:
    """The runbook's full health document (operators only), 503 when the store is down."""
    store = await _store_status(app.store)
    healthy = store["status"] == "ok"
    status = "draining" if app.draining else ("ok" if healthy else "degraded")
    body = {
        "status": status,
        "version": __version__,
        "uptime_seconds": round(time.time() - app.started_at, 3),
        "active_connections": app.active_connections,
        "authenticated_connections": app.authenticated_connections,
        "sessions": app.session_count,
        "store": store,
    }
    return (200 if healthy else 503), body


async def health(app: HealthSource, scope: Scope | None = None) -> tuple[int, dict[str, Any]]:
    """``/health``: the status alone (``ok``, ``degraded`` with 503, ``draining``).

    With the request's ``scope`` carrying an operator token, the full document.
    """
    if scope is not None and app.admin.is_operator(scope):
        return await health_details(app)
    status, body = await health_details(app)
    return status, {"status": body["status"]}


async def readiness(app: HealthSource) -> tuple[int, dict[str, Any]]:
    """Ready to take traffic: the store answers and the server is not draining."""
    store = await _store_status(app.store)
    ready = store["status"] == "ok" and not app.draining
    body = {"status": "ready" if ready else "not ready", "draining": app.draining}
    return (200 if ready else 503), body
