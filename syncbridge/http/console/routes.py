"""The console's HTTP routes: the page, its static files, and its authenticated live feeds.

::

    GET /console                       the page (nothing secret in it; no token needed)
    GET /console/static/<file>         its script and style sheet, from package data
    GET /console/api/me                who the Bearer token is: sign-in check (admin or metrics)
    GET /console/api/overview          server-sent events: health, charts, hot sessions,
                                       refusals, notable closes (admin or metrics)
    GET /console/api/session?session_id=ID
                                       server-sent events: one session's devices, state,
                                       changes and closes (admin)

The feeds are read with ``fetch`` and a Bearer header, never ``EventSource``,
which cannot send one (a token in the URL would end up in logs). Actions are
the operator routes' own (``POST /admin/kick``, ``/debug/tasks``,
``/debug/profile``), which audit them. Every response carries a strict
Content-Security-Policy: scripts and styles from this origin only, no inline
code, no ``eval``, no framing.
"""

from __future__ import annotations

import importlib.resources
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs

import orjson
import trio

from syncbridge.auth import ADMIN_ROLE, METRICS_ROLE, Claims
from syncbridge.http.admin import AdminRoutes
from syncbridge.http.console.feeds import (
    ConsoleSource,
    Sampler,
    SessionFeed,
    describe_samples,
    overview,
)
from syncbridge.http.response import send_json, send_text

__all__ = ["CONSOLE_PATH", "SECURITY_HEADERS", "Console", "is_console_path"]

log = logging.getLogger(__name__)

CONSOLE_PATH: Final = "/console"
_READ_ROLES: Final = (ADMIN_ROLE, METRICS_ROLE)
_ADMIN_ROLES: Final = (ADMIN_ROLE,)
_TICK_SECONDS: Final = 1.0
_MIN_STEP_SECONDS: Final = 0.2
_MAX_SESSION_ID: Final = 512

SECURITY_HEADERS: Final = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

_STATIC: Final = {
    "console.js": b"text/javascript; charset=utf-8",
    "console.css": b"text/css; charset=utf-8",
}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Emit = Callable[[str, Any], Awaitable[None]]


def is_console_path(path: str) -> bool:
    """Whether a path belongs to the console."""
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


def _asset(name: str) -> bytes:
    return importlib.resources.files(__package__).joinpath("static", name).read_bytes()


class Console:
    """The console of one app; :meth:`run` keeps its chart samples (lifespan task)."""

    def __init__(self, app: ConsoleSource, admin: AdminRoutes) -> None:
        self._app = app
        self._admin = admin
        self.sampler = Sampler(app)
        self._feeds = 0
        self._no_feeds = trio.Event()
        self._no_feeds.set()

    @property
    def open_feeds(self) -> int:
        """Feeds (server-sent-event responses) being served now."""
        return self._feeds

    async def wait_no_feeds(self) -> None:
        """Block until no feed is open (a feed ends when its browser goes away)."""
        await self._no_feeds.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take the chart samples until cancelled."""
        await self.sampler.run(task_status=task_status)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one console request."""
        path: str = scope["path"]
        # The page may be HEAD-checked; a feed is GET only (a HEAD would stream forever).
        allowed = ("GET",) if path.startswith(CONSOLE_PATH + "/api/") else ("GET", "HEAD")
        if scope["method"] not in allowed:
            await send_json(
                send,
                405,
                {"error": "method not allowed"},
                headers=[(b"allow", ", ".join(allowed).encode()), *SECURITY_HEADERS],
            )
            return
        if path in (CONSOLE_PATH, CONSOLE_PATH + "/"):
            await self._file(send, "index.html", b"text/html; charset=utf-8")
        elif path.startswith(CONSOLE_PATH + "/static/"):
            name = path.removeprefix(CONSOLE_PATH + "/static/")
            content_type = _STATIC.get(name)
            if content_type is None:
                await self._not_found(send, path)
            else:
                await self._file(send, name, content_type)
        elif path == CONSOLE_PATH + "/api/me":
            claims = await self._authorize(scope, send, _READ_ROLES)
            if claims is not None:
                await send_json(
                    send,
                    200,
                    {
                        "user_id": claims.user_id,
                        "device_id": claims.device_id,
                        "roles": list(claims.roles),
                        "expires_at": claims.expires_at,
                    },
                    headers=SECURITY_HEADERS,
                )
        elif path == CONSOLE_PATH + "/api/overview":
            claims = await self._authorize(scope, send, _READ_ROLES)
            if claims is not None:
                await self._stream(receive, send, claims, self._overview)
        elif path == CONSOLE_PATH + "/api/session":
            session_id = _query(scope).get("session_id", "")
            claims = await self._authorize(scope, send, _ADMIN_ROLES)
            if claims is None:
                return
            if not session_id or len(session_id) > _MAX_SESSION_ID:
                await send_json(
                    send, 400, {"error": "session_id is required"}, headers=SECURITY_HEADERS
                )
                return
            feed = SessionFeed(self._app, session_id)
            await self._stream(receive, send, claims, lambda emit: self._session(feed, emit))
        else:
            await self._not_found(send, path)

    async def _authorize(self, scope: Scope, send: Send, roles: tuple[str, ...]) -> Claims | None:
        return await self._admin.authorize(scope, _with_headers(send, SECURITY_HEADERS), roles)

    async def _not_found(self, send: Send, path: str) -> None:
        await send_json(send, 404, {"error": f"no route for {path}"}, headers=SECURITY_HEADERS)

    async def _file(self, send: Send, name: str, content_type: bytes) -> None:
        body = _asset(name)
        await send_text(send, 200, body, content_type=content_type, headers=SECURITY_HEADERS)

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        claims: Claims,
        produce: Callable[[Emit], Awaitable[None]],
    ) -> None:
        """Serve ``produce``'s events until the client goes, the token expires or we drain."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
                    *SECURITY_HEADERS,
                ],
            }
        )
        if not self._feeds:
            self._no_feeds = trio.Event()
        self._feeds += 1
        try:
            await self._serve_feed(receive, send, claims, produce)
        finally:
            self._feeds -= 1
            if not self._feeds:
                self._no_feeds.set()

    async def _serve_feed(
        self,
        receive: Receive,
        send: Send,
        claims: Claims,
        produce: Callable[[Emit], Awaitable[None]],
    ) -> None:
        async def emit(event: str, data: Any) -> None:
            body = b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})

        gone = False
        async with trio.open_nursery() as nursery:

            async def watch_disconnect() -> None:
                nonlocal gone
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_disconnect)
            # A feed lasts as long as the token that opened it; the page signs in again.
            expires_in = claims.expires_at - time.time()
            with trio.move_on_after(max(0.0, expires_in)):
                await produce(emit)
            if not gone:
                await emit("end", {"reason": "draining" if self._app.draining else "expired"})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()

    async def _overview(self, emit: Emit) -> None:
        sampler = self.sampler
        samples = sampler.samples
        await emit("history", {"samples": describe_samples(samples), "interval": sampler.interval})
        last = samples[-1].at if samples else 0.0
        while not self._app.draining:
            document = await overview(self._app, sampler, after=last)
            last = max([last, *(s["at"] for s in document["samples"])])
            await emit("overview", document)
            await trio.sleep(_TICK_SECONDS)

    async def _session(self, feed: SessionFeed, emit: Emit) -> None:
        observer = self._app.service.observer
        while not self._app.draining:
            started = trio.current_time()
            seen = observer.last_seq  # before the step: what happens during it wakes the next
            for event, data in await feed.step():
                await emit(event, data)
            await emit("alive", {"at": round(time.time(), 3)})
            # Woken by the next update or close of any session here; otherwise
            # once a tick, for changes made through other processes.
            with trio.move_on_after(_TICK_SECONDS):
                await observer.wait_event(after=seen)
            # A hot session changes hundreds of times a second: one step (a snapshot
            # of up to MAX_STATE_BYTES) per interval at most, whatever happened since.
            await trio.sleep_until(started + _MIN_STEP_SECONDS)


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sending


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}
