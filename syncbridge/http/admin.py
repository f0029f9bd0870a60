"""Operator routes: /metrics, /health/details, /debug/*, /admin/sessions, /admin/connections,
and the action POST /admin/kick.

All of them need a Bearer token: ``/metrics`` and ``/health/details`` one with
the ``admin`` or ``metrics`` role, the rest the ``admin`` role. With ADMIN_ADDR
set they are served only on that (private) address and the public port answers
404. Refused requests are counted (auth_failures for bad tokens, refusals for
missing tokens and roles) and logged through a per-reason budget.
Actions (kick, task dump, profile) each log one line on the ``syncbridge.audit``
logger: who (the token's user and device), what, and the target.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs

import trio
from pyinstrument import Profiler

from syncbridge.auth import ADMIN_ROLE, METRICS_ROLE, Claims, TokenAuthority
from syncbridge.control import CloseOrder
from syncbridge.errors import AuthenticationError, CloseCode, StoreUnavailable
from syncbridge.http.health import health_details
from syncbridge.http.response import send_json, send_text
from syncbridge.metrics import CONTENT_TYPE, Metrics
from syncbridge.refusals import RefusalLog

__all__ = ["ADMIN_PATHS", "HEALTH_DETAILS_PATH", "AdminRoutes", "audit", "is_admin_path"]

audit_log = logging.getLogger("syncbridge.audit")

#: Operator routes that change something (POST only, each audited).
_ACTIONS: Final = frozenset({"/admin/kick", "/admin/revoke"})

HEALTH_DETAILS_PATH: Final = "/health/details"
ADMIN_PATHS: Final = ("/metrics", HEALTH_DETAILS_PATH, "/debug/", "/admin/")
#: Roles that may read operational details (metrics, the full health document).
_READ_ROLES: Final = (ADMIN_ROLE, METRICS_ROLE)
_MAX_PROFILE_SECONDS: Final = 60.0

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Send, Claims], Awaitable[None]]


def audit(claims: Claims, action: str, target: str, outcome: str) -> None:
    """One audit line for an operator's action (never a token or a state body)."""
    audit_log.info(
        "audit: user=%s device=%s action=%s target=%s outcome=%s",
        claims.user_id,
        claims.device_id,
        action,
        target,
        outcome,
    )


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

    async def authorize(self, scope: Scope, send: Send, roles: tuple[str, ...]) -> Claims | None:
        """The request's verified claims if its Bearer token has one of ``roles``;
        otherwise answer 401 or 403 (counted like every refusal here) and return None."""
        return await self._authorize(scope, send, roles)

    async def handle(self, scope: Scope, send: Send) -> None:
        """Serve one operator request."""
        path = scope["path"]
        routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            "/metrics": (_READ_ROLES, self._metrics_page),
            HEALTH_DETAILS_PATH: (_READ_ROLES, self._health_details),
            "/debug/tasks": ((ADMIN_ROLE,), self._tasks),
            "/debug/profile": ((ADMIN_ROLE,), self._profile),
            "/admin/sessions": ((ADMIN_ROLE,), self._sessions),
            "/admin/connections": ((ADMIN_ROLE,), self._connections),
            "/admin/kick": ((ADMIN_ROLE,), self._kick),
            "/admin/revoke": ((ADMIN_ROLE,), self._revoke),
        }
        route = routes.get(path)
        if route is None:
            await send_json(send, 404, {"error": f"no route for {path}"})
            return
        # The actions change something: POST only, so that a link or a prefetch
        # never kicks or revokes anyone. Everything else reads: GET.
        allowed = ("POST",) if path in _ACTIONS else ("GET", "HEAD")
        if scope["method"] not in allowed:
            await send_json(
                send,
                405,
                {"error": "method not allowed"},
                headers=[(b"allow", ", ".join(allowed).encode())],
            )
            return
        roles, handler = route
        claims = await self._authorize(scope, send, roles)
        if claims is not None:
            await handler(scope, send, claims)

    async def _metrics_page(self, _scope: Scope, send: Send, _claims: Claims) -> None:
        body = self._metrics.render()
        await send_text(send, 200, body, content_type=CONTENT_TYPE.encode())

    async def _health_details(self, _scope: Scope, send: Send, _claims: Claims) -> None:
        status, body = await health_details(self._app)
        await send_json(send, status, body)

    async def _tasks(self, scope: Scope, send: Send, claims: Claims) -> None:
        tree, counts = task_tree()
        audit(claims, "dump-tasks", "process", f"{sum(counts.values())} tasks")
        if _query(scope).get("format") == "json":
            await send_json(
                send, 200, {"total": sum(counts.values()), "by_name": dict(counts.most_common())}
            )
            return
        summary = "\n".join(f"{n:6d}  {name}" for name, n in counts.most_common())
        body = f"{sum(counts.values())} tasks\n\n{summary}\n\n{tree}\n"
        await send_text(send, 200, body.encode())

    async def _profile(self, scope: Scope, send: Send, claims: Claims) -> None:
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
        audit(claims, "profile", "process", f"{seconds:g}s started")
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

    async def _sessions(self, _scope: Scope, send: Send, _claims: Claims) -> None:
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

    async def _connections(self, _scope: Scope, send: Send, _claims: Claims) -> None:
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

    async def _kick(self, scope: Scope, send: Send, claims: Claims) -> None:
        """Close every connection of one device with 4403 (KICKED)."""
        query = _query(scope)
        session_id, device_id = query.get("session_id", ""), query.get("device_id", "")
        if not session_id or not device_id:
            await send_json(send, 400, {"error": "session_id and device_id are required"})
            return
        target = f"session={session_id!r} device={device_id!r}"
        kicked = [
            c
            for c in self._app.connections.values()
            if c.claims is not None
            and c.claims.session_id == session_id
            and c.claims.device_id == device_id
        ]
        for connection in kicked:
            connection.close(CloseCode.KICKED, "closed by an operator")
        audit(claims, "kick", target, f"{len(kicked)} connection(s) closed")
        if not kicked:
            await send_json(send, 404, {"error": "no connection of that device here"})
            return
        await send_json(send, 200, {"closed": len(kicked), "close_code": int(CloseCode.KICKED)})

    async def _revoke(self, scope: Scope, send: Send, claims: Claims) -> None:
        """Refuse every token of one device issued until now (on every process, until
        REVOCATION_RETENTION), and close its sockets with 4402: the HTTP API's device
        revocation, for an operator."""
        query = _query(scope)
        session_id, device_id = query.get("session_id", ""), query.get("device_id", "")
        if not session_id or not device_id:
            await send_json(send, 400, {"error": "session_id and device_id are required"})
            return
        target = f"session={session_id!r} device={device_id!r}"
        service = self._app.service
        now = service.now()
        until = now + int(self._app.settings.revocation_retention)
        try:
            await service.store.revoke(
                until=until, session_id=session_id, device_id=device_id, issued_before=now
            )
            await service.close_everywhere(
                CloseOrder(
                    code=CloseCode.TOKEN_REVOKED,
                    reason="token revoked",
                    session_id=session_id,
                    device_id=device_id,
                    issued_before=now,
                )
            )
        except StoreUnavailable as exc:
            audit(claims, "revoke", target, f"failed: {exc.message}")
            await send_json(send, 503, {"error": exc.message})
            return
        audit(claims, "revoke", target, f"tokens issued until {now} refused until {until}")
        await send_json(
            send,
            200,
            {"revoked": True, "until": until, "close_code": int(CloseCode.TOKEN_REVOKED)},
        )


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}
