"""The /v1 Starlette application: routes, problem answers, request metrics."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from syncbridge.errors import RequestError
from syncbridge.http.api import (
    devices,
    handoff,
    history,
    openapi,
    patch,
    removal,
    snapshots,
    state,
)
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.problem import Problem

__all__ = ["ApiApp", "create_api"]

log = logging.getLogger(__name__)

Handler = Callable[[Request, ApiContext], Awaitable[Response]]


def _resource(path: str, name: str, handlers: dict[str, Handler]) -> Route:
    """One path with a handler per method (405 with Allow for the others)."""

    async def endpoint(request: Request) -> Response:
        ctx: ApiContext = request.app.state.ctx
        method = "GET" if request.method == "HEAD" else request.method
        try:
            response = await handlers[method](request, ctx)
        except Problem as problem:
            response = problem.response()
        except RequestError as exc:  # limits, store outages: same codes as over /ws
            response = Problem.from_request_error(exc).response()
        ctx.metrics.http_requests.labels(
            route=name, method=request.method, status=str(response.status_code)
        ).inc()
        return response

    return Route(path, endpoint, methods=list(handlers), name=name)


def routes() -> list[BaseRoute]:
    """Every /v1 route (the OpenAPI document is generated from the same table)."""
    session = "/v1/sessions/{sid}"
    return [
        _resource(
            f"{session}/state",
            "state",
            {"GET": state.get_state, "PUT": state.put_state, "PATCH": patch.patch_state},
        ),
        _resource(f"{session}/history", "history", {"GET": history.get_history}),
        _resource(f"{session}/devices", "devices", {"GET": devices.list_devices}),
        _resource(f"{session}/devices/{{device_id}}", "device", {"DELETE": removal.remove_device}),
        _resource(session, "session", {"DELETE": removal.delete_session}),
        _resource(
            f"{session}/snapshots",
            "snapshots",
            {"GET": snapshots.list_snapshots, "POST": snapshots.create_snapshot},
        ),
        _resource(
            f"{session}/snapshots/{{snapshot_id}}", "snapshot", {"GET": snapshots.get_snapshot}
        ),
        _resource(
            f"{session}/snapshots/{{snapshot_id}}/restore",
            "restore",
            {"POST": snapshots.restore_snapshot},
        ),
        _resource("/v1/tokens/revoke", "revoke", {"POST": removal.revoke_tokens}),
        _resource(f"{session}/handoff", "handoff", {"POST": handoff.create_handoff}),
        _resource("/v1/handoff/claim", "handoff_claim", {"POST": handoff.claim_handoff}),
        _resource("/v1/openapi.json", "openapi", {"GET": openapi.get_openapi}),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        problem = Problem(404, "NOT_FOUND", f"no route for {request.url.path}")
    elif exc.status_code == 405:
        allow = dict(exc.headers or {}).get("Allow", "")
        problem = Problem(
            405,
            "METHOD_NOT_ALLOWED",
            f"{request.method} is not allowed here; allowed: {allow}",
            headers={"allow": allow},
        )
    else:
        problem = Problem(exc.status_code, "HTTP_ERROR", str(exc.detail))
    return problem.response()


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("HTTP API %s %s failed", request.method, request.url.path, exc_info=exc)
    return Problem(500, "INTERNAL_ERROR", "the server failed; this is a bug").response()


ApiApp = Callable[
    [
        dict[str, Any],
        Callable[[], Awaitable[dict[str, Any]]],
        Callable[[dict[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


def create_api(ctx: ApiContext) -> ApiApp:
    """The ASGI app app.py mounts for /v1 (served by hypercorn, on anyio -> trio)."""
    handlers: dict[Any, Any] = {HTTPException: _http_error, Exception: _internal_error}
    api = Starlette(routes=routes(), exception_handlers=handlers)
    api.state.ctx = ctx
    # Starlette types its ASGI callables over MutableMapping; app.py's are dicts.
    return cast(ApiApp, api)
