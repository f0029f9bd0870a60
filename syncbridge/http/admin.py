"""Operator routes: /metrics, /health/details, /debug/*, /admin/sessions, /admin/connections.

All of them need a Bearer token: ``/metrics`` and ``/health/details`` one with
the ``admin`` or ``metrics`` role, the rest the ``admin`` role. With ADMIN_ADDR
set they are served only on that (private) address and the public port answers
404. Refused requests are counted (auth_failures for bad tokens, refusals for
missing tokens and roles) and logged through a per-reason budget.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs

import trio
from pyinstrument import Profiler

from syncbridge.auth import ADMIN_ROLE, METRICS_ROLE, Claims, TokenAuthority
from syncbridge.errors import AuthenticationError
from syncbridge.http.health import health_details
from syncbridge.http.response import send_json, send_text
from syncbridge.metrics import CONTENT_TYPE, Metrics
from syncbridge.refusals import RefusalLog

__all__ = ["ADMIN_PATHS", "HEALTH_DETAILS_PATH", "AdminRoutes"]

HEALTH_DETAILS_PATH: Final = "/health/details"
ADMIN_PATHS: Final = ("/metrics", HEALTH_DETAILS_PATH, "/debug/", "/admin/")
#: Roles that may read operational details (metrics, the full health document).
_READ_ROLES: Final = (ADMIN_ROLE, METRICS_ROLE)
_MAX_PROFILE_SECONDS: Final = 60.0

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_admin_path(path: str) -> bool:
    """Whether a path belongs to the operator routes."""
    return path in ("/metrics", HEALTH_DETAILS_PATH) or path.startswith(("/debug/", "/admin/"))


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def task_tree() -> tuple[str, Counter[str]]:
    """The live trio task tree as indented text, and the number of tasks per name."""
    counts: Counter[str] = Counter()
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        counts[task.name] += 1
        lines.append("  " * depth + task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    root = trio.lowlevel.current_root_task()
    if root is not None:
        walk(root, 0)
    return "\n".join(lines), counts


class AdminRoutes:
    """The operator routes of one app."""

    def __init__(self, app: Any, authority: TokenAuthority, metrics: Metrics) -> None:
        self._app = app
        self._authority = authority
        self._metrics = metrics
        self._profiling = trio.Lock()
        self._refusals = RefusalLog(metrics.count_refusal)
        self._auth_refusals = RefusalLog(
            lambda reason: metrics.auth_failures.labels(reason=reason).inc()
        )

    def _verify(self, scope: Scope) -> Claims | str:
        """The claims of the request's Bearer token, or why there are none."""
        token = _bearer(scope)
        if token is None:
            self._refusals.refuse("http_no_token", "%s", scope.get("path"))
            return "Bearer token required"
        try:
            return self._authority.verify(token, now=time.time())
        except AuthenticationError as exc:
            self._auth_refusals.refuse(exc.reason, "HTTP %s: %s", scope.get("path"), exc.message)
            return exc.message

    def is_operator(self, scope: Scope) -> bool:
        """Whether the request carries a valid token with the admin or metrics role."""
        claims = self._verify(scope) if _bearer(scope) is not None else None
        return isinstance(claims, Claims) and not set(_READ_ROLES).isdisjoint(claims.roles)

    async def _authorize(self, scope: Scope, send: Send, roles: tuple[str, ...]) -> Claims | None:
        claims = self._verify(scope)
        if not isinstance(claims, Claims):
            headers = [(b"www-authenticate", b'Bearer realm="syncbridge"')]
            await send_json(send, 401, {"error": claims}, headers=headers)
            return None
        if not set(roles) & set(claims.roles):
            self._refusals.refuse("http_role", "%s needs %s", scope.get("path"), roles)
            await send_json(send, 403, {"error": f"needs the role {' or '.join(roles)}"})
            return None
        return claims

    async def handle(self, scope: Scope, send: Send) -> None:
        """Serve one operator request."""
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await send_json(
                send, 405, {"error": "method not allowed"}, headers=[(b"allow", b"GET")]
            )
            return
        routes = {
            "/metrics": (_READ_ROLES, self._metrics_page),
            HEALTH_DETAILS_PATH: (_READ_ROLES, self._health_details),
            "/debug/tasks": ((ADMIN_ROLE,), self._tasks),
            "/debug/profile": ((ADMIN_ROLE,), self._profile),
            "/admin/sessions": ((ADMIN_ROLE,), self._sessions),
            "/admin/connections": ((ADMIN_ROLE,), self._connections),
        }
        route = routes.get(path)
        if route is None:
            await send_json(send, 404, {"error": f"no route for {path}"})
            return
        roles, handler = route
        if await self._authorize(scope, send, roles) is not None:
            await handler(scope, send)

    async def _metrics_page(self, _scope: Scope, send: Send) -> None:
        body = self._metrics.render()
        await send_text(send, 200, body, content_type=CONTENT_TYPE.encode())

    async def _health_details(self, _scope: Scope, send: Send) -> None:
        status, body = await health_details(self._app)
        await send_json(send, status, body)

    async def _tasks(self, scope: Scope, send: Send) -> None:
        tree, counts = task_tree()
        if _query(scope).get("format") == "json":
            await send_json(
                send, 200, {"total": sum(counts.values()), "by_name": dict(counts.most_common())}
            )
            return
        summary = "\n".join(f"{n:6d}  {name}" for name, n in counts.most_common())
        body = f"{sum(counts.values())} tasks\n\n{summary}\n\n{tree}\n"
        await send_text(send, 200, body.encode())

    async def _profile(self, scope: Scope, send: Send) -> None:
        try:
            seconds = float(_query(scope).get("seconds", "10"))
        except ValueError:
            seconds = -1
        if not 0 < seconds <= _MAX_PROFILE_SECONDS:
            await send_json(
                send, 400, {"error": f"seconds must be in (0, {_MAX_PROFILE_SECONDS:g}]"}
            )
            return
        if self._profiling.locked():
            await send_json(send, 409, {"error": "a profile is already running"})
            return
        async with self._profiling:
            # The whole server runs on this thread, so a sampling profiler of
            # the thread sees every task's work while we sleep here.
            profiler = Profiler(interval=0.001, async_mode="disabled")
            profiler.start()
            try:
                await trio.sleep(seconds)
            finally:
                profiler.stop()
        if _query(scope).get("format") == "html":
            await send_text(
                send, 200, profiler.output_html().encode(), content_type=b"text/html; charset=utf-8"
            )
        else:
            await send_text(send, 200, profiler.output_text(unicode=True, color=False).encode())

    async def _sessions(self, _scope: Scope, send: Send) -> None:
        app = self._app
        sessions: Counter[str] = Counter(
            c.claims.session_id for c in app.connections.values() if c.claims is not None
        )
        await send_json(
            send,
            200,
            {
                "count": len(sessions),
                "sessions": [{"session_id": s, "connections": n} for s, n in sessions.items()],
            },
        )

    async def _connections(self, _scope: Scope, send: Send) -> None:
        app = self._app
        now = trio.current_time()
        connections = [
            {
                "connection": c.key,
                "session_id": c.claims.session_id if c.claims else None,
                "user_id": c.claims.user_id if c.claims else None,
                "device_id": c.claims.device_id if c.claims else None,
                "authenticated": c.claims is not None,
                "idle_seconds": round(now - c.last_seen, 3),
                "outbox_frames": c.outbox.depth,
            }
            for c in app.connections.values()
        ]
        await send_json(send, 200, {"count": len(connections), "connections": connections})


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}
