"""GET and PUT /v1/sessions/{sid}/state: the session's state in its one version line."""

from __future__ import annotations

import re
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from syncbridge.errors import VersionConflict
from syncbridge.http.api.access import Caller, require_session
from syncbridge.http.api.body import read_json, structure
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.problem import Problem
from syncbridge.http.api.schemas import PutState
from syncbridge.protocol.session import Snapshot
from syncbridge.state_writer import Transform, Written

__all__ = ["JSON", "base_version_of", "get_state", "put_state", "write_state"]

JSON: Final = ("application/json",)
_ETAG: Final = re.compile(r'^"(\d{1,18})"$')


def json_response(body: Any, *, status: int = 200, version: int | None = None) -> Response:
    """A JSON response; with ``version``, its ETag."""
    headers = {"cache-control": "no-store"}
    if version is not None:
        headers["etag"] = f'"{version}"'
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _updated_by(user: str | None, device: str | None) -> dict[str, str] | None:
    return None if user is None or device is None else {"user_id": user, "device_id": device}


def snapshot_document(snap: Snapshot) -> dict[str, Any]:
    """The state resource for a snapshot read from the store."""
    return {
        "session_id": snap.session_id,
        "version": snap.version,
        "state": snap.state_json(),
        "updated_at": snap.updated_at,
        "updated_by": _updated_by(snap.updated_by_user, snap.updated_by_device),
    }


def written_document(written: Written) -> dict[str, Any]:
    """The state resource after a write."""
    return {
        "session_id": written.session_id,
        "version": written.version,
        "state": written.state,
        "updated_at": written.updated_at,
        "updated_by": _updated_by(written.updated_by_user, written.updated_by_device),
    }


def base_version_of(request: Request, body_base: int | None) -> int | None:
    """The version a write is based on: ``If-Match: "<version>"`` and/or ``base_version``."""
    header = request.headers.get("if-match")
    from_header: int | None = None
    if header is not None and header.strip() != "*":
        match = _ETAG.match(header.strip())
        if match is None:
            raise Problem(
                400,
                "INVALID_IF_MATCH",
                'If-Match must be one strong entity tag holding a version, e.g. "12"',
            )
        from_header = int(match.group(1))
    if from_header is not None and body_base is not None and from_header != body_base:
        raise Problem(
            400,
            "INVALID_IF_MATCH",
            f"If-Match names version {from_header} but base_version is {body_base}",
        )
    return from_header if from_header is not None else body_base


async def get_state(request: Request, ctx: ApiContext) -> Response:
    """The whole state, its version (also as the ETag), when and by whom it last changed."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    snap = await ctx.writer.read(session_id)
    return json_response(snapshot_document(snap), version=snap.version)


async def write_state(
    ctx: ApiContext,
    caller: Caller,
    session_id: str,
    transform: Transform,
    base_version: int | None,
) -> Response:
    """Apply a whole-document write and answer it (409 with the current state on conflict)."""
    try:
        written = await ctx.writer.write(
            session_id, transform, ctx.origin(caller), base_version=base_version
        )
    except VersionConflict as exc:
        current = await ctx.writer.read(session_id)
        raise Problem(
            409,
            "VERSION_CONFLICT",
            exc.message.replace(f"version {exc.current_version}", f"version {current.version}"),
            extra={
                "current_version": current.version,
                "base_version": exc.base_version,
                "state": current.state_json(),
            },
        ) from None
    return json_response(written_document(written), version=written.version)


async def put_state(request: Request, ctx: ApiContext) -> Response:
    """Replace the whole state as one new version (optionally based on a version)."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    ctx.charge_write(caller)
    body = structure(
        await read_json(request, limit=ctx.settings.http_max_body_bytes, media_types=JSON),
        PutState,
    )
    base = base_version_of(request, body.base_version)
    return await write_state(ctx, caller, session_id, lambda _current: body.state, base)
