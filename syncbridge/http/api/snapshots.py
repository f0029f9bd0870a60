"""Labelled restore points: create, list, read, restore (as one new broadcast version)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from syncbridge.http.api.access import require_session
from syncbridge.http.api.body import read_json, structure
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.problem import Problem
from syncbridge.http.api.schemas import SnapshotCreate
from syncbridge.http.api.state import JSON, base_version_of, json_response, write_state
from syncbridge.store.base import RestorePoint

__all__ = ["create_snapshot", "get_snapshot", "list_snapshots", "restore_snapshot"]


def _not_found(point_id: str) -> Problem:
    return Problem(
        404, "SNAPSHOT_NOT_FOUND", f"no snapshot {point_id!r} in this session (or it expired)"
    )


async def _point(ctx: ApiContext, session_id: str, point_id: str) -> tuple[RestorePoint, bytes]:
    with ctx.metrics.store_operation("snapshot_get"):
        found = await ctx.service.store.restore_point(session_id, point_id)
    if found is None:
        raise _not_found(point_id)
    return found


async def create_snapshot(request: Request, ctx: ApiContext) -> Response:
    """A labelled restore point of the current state (201, Location)."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    ctx.charge_write(caller)
    data = await read_json(
        request, limit=ctx.settings.http_max_body_bytes, media_types=JSON, empty={}
    )
    body = structure(data, SnapshotCreate)
    with ctx.metrics.store_operation("snapshot_save"):
        point = await ctx.service.store.save_restore_point(
            session_id,
            point_id=secrets.token_hex(8),
            label=body.label,
            origin=ctx.origin(caller),
            keep=ctx.settings.snapshots_per_session,
        )
    response = json_response(point.describe(), status=201)
    # Header values are Latin-1: the id is percent-encoded, as in the request line.
    response.headers["location"] = f"/v1/sessions/{quote(session_id, safe='')}/snapshots/{point.id}"
    return response


async def list_snapshots(request: Request, ctx: ApiContext) -> Response:
    """The session's restore points, newest first (at most SNAPSHOTS_PER_SESSION)."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    with ctx.metrics.store_operation("snapshot_list"):
        points = await ctx.service.store.restore_points(session_id)
    return json_response({"session_id": session_id, "snapshots": [p.describe() for p in points]})


async def get_snapshot(request: Request, ctx: ApiContext) -> Response:
    """One restore point with its state."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    point, state = await _point(ctx, session_id, request.path_params["snapshot_id"])
    body: dict[str, Any] = {**point.describe(), "state": orjson.Fragment(state)}
    return json_response(body)


async def restore_snapshot(request: Request, ctx: ApiContext) -> Response:
    """The state becomes the restore point's, as one new version, broadcast to devices."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    ctx.charge_write(caller)
    _point_desc, raw = await _point(ctx, session_id, request.path_params["snapshot_id"])
    state: dict[str, Any] = orjson.loads(raw)
    base = base_version_of(request, None)
    return await write_state(ctx, caller, session_id, lambda _current: dict(state), base)
