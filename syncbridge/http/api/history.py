"""GET /v1/sessions/{sid}/history?since=N: the changes after version N, or 410."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from syncbridge.http.api.access import require_session
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.problem import Problem
from syncbridge.http.api.state import json_response

__all__ = ["get_history", "query_int"]


def query_int(request: Request, name: str, *, default: int | None = None) -> int:
    """A non-negative integer query parameter (422 INVALID_QUERY otherwise)."""
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise Problem(422, "INVALID_QUERY", f"the query parameter {name} is required")
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise Problem(
            422, "INVALID_QUERY", f"the query parameter {name} must be a non-negative integer"
        )
    return int(raw)


async def get_history(request: Request, ctx: ApiContext) -> Response:
    """The retained changes after ``since``, oldest first; 410 when not retained."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    since = query_int(request, "since", default=0)
    with ctx.metrics.store_operation("changes_since"):
        changes = await ctx.service.store.changes_since(session_id, since)
    if changes is None:
        raise Problem(
            410,
            "HISTORY_GONE",
            f"the changes after version {since} are no longer retained (or the session "
            "never reached it): read the whole state from /state",
            extra={"since": since},
        )
    version = changes[-1].version if changes else since
    return json_response(
        {
            "session_id": session_id,
            "since": since,
            "version": version,
            "changes": [{**c.describe(), "at": c.at} for c in changes],
        }
    )
