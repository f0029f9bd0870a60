"""GET /v1/openapi.json: the OpenAPI 3.1 document of the HTTP API.

Operations are declared here next to their schemas; ``tests/http`` checks that
this table and the routes in :mod:`syncbridge.http.api.routes` name the same
(path, method) pairs, and runs schemathesis against a live server with it.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from syncbridge import __version__
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.openapi_schemas import ID, SCHEMAS, ref

__all__ = ["OPERATIONS", "document", "get_openapi"]

JSON_TYPE: Final = "application/json"
PROBLEM_TYPE: Final = "application/problem+json"


_SID: Final = {
    "name": "sid",
    "in": "path",
    "required": True,
    "schema": {**ID, "pattern": "^[^/]*$"},
    "description": "session id (a device token reaches only its own)",
}
_IF_MATCH: Final = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": '^("[0-9]{1,15}"|\\*)$'},
    "description": 'the version the write is based on, as an ETag ("12")',
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON_TYPE: {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    problem = {PROBLEM_TYPE: {"schema": ref("Problem")}}
    base = (400, 401, 403, 404, 503)
    return {
        str(s): {"description": "problem details", "content": problem}
        for s in sorted({*base, *statuses})
    }


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: tuple[dict[str, Any], ...] = (_SID,),
    body: tuple[str, str] | None = None,
    body_required: bool = True,
    errors: tuple[int, ...] = (),
    security: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": list(params),
        "responses": {**responses, **_problems(*errors)},
    }
    if body is not None:
        media, schema = body
        op["requestBody"] = {
            "required": body_required,
            "content": {media: {"schema": ref(schema)}},
        }
    if not security:
        op["security"] = []
    return op


_WRITE: Final = (409, 413, 415, 422, 429)
_SESSION: Final = "/v1/sessions/{sid}"
_NO_CONTENT: Final = {"204": {"description": "done"}}
_STATE_OK: Final = {
    "200": {
        **_json(ref("StateResource"), "the state"),
        "headers": {"ETag": {"schema": {"type": "string"}, "description": '"<version>"'}},
    }
}

#: (path, method) -> operation; the routes must match this table exactly.
OPERATIONS: Final[dict[tuple[str, str], dict[str, Any]]] = {
    (f"{_SESSION}/state", "get"): _op("Read the state", _STATE_OK),
    (f"{_SESSION}/state", "put"): _op(
        "Replace the state as one new version",
        _STATE_OK,
        params=(_SID, _IF_MATCH),
        body=(JSON_TYPE, "PutState"),
        errors=_WRITE,
    ),
    (f"{_SESSION}/state", "patch"): _op(
        "Apply an RFC 6902 JSON Patch as one new version",
        _STATE_OK,
        params=(_SID, _IF_MATCH),
        body=("application/json-patch+json", "JsonPatch"),
        errors=_WRITE,
    ),
    (f"{_SESSION}/history", "get"): _op(
        "Changes after a version",
        {"200": _json(ref("History"), "the retained changes")},
        params=(
            _SID,
            {
                "name": "since",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 0, "maximum": 10**15},
            },
        ),
        errors=(410, 422),
    ),
    (f"{_SESSION}/snapshots", "get"): _op(
        "List snapshots, newest first", {"200": _json(ref("SnapshotList"), "snapshots")}
    ),
    (f"{_SESSION}/snapshots", "post"): _op(
        "Save a labelled snapshot",
        {"201": _json(ref("Snapshot"), "the snapshot")},
        body=(JSON_TYPE, "SnapshotCreate"),
        body_required=False,
        errors=(413, 415, 422, 429),
    ),
    (f"{_SESSION}/snapshots/{{snapshot_id}}", "get"): _op(
        "One snapshot with its state",
        {"200": _json(ref("Snapshot"), "the snapshot")},
        params=(_SID, {"name": "snapshot_id", "in": "path", "required": True, "schema": ID}),
    ),
    (f"{_SESSION}/snapshots/{{snapshot_id}}/restore", "post"): _op(
        "Restore a snapshot as one new version",
        _STATE_OK,
        params=(
            _SID,
            {"name": "snapshot_id", "in": "path", "required": True, "schema": ID},
            _IF_MATCH,
        ),
        errors=(409, 413, 429),
    ),
    (f"{_SESSION}/devices", "get"): _op(
        "Devices online now", {"200": _json(ref("Devices"), "online devices")}
    ),
    (f"{_SESSION}/devices/{{device_id}}", "delete"): _op(
        "Remove a device (close 4409; with revoke, 4402 and its tokens refused)",
        _NO_CONTENT,
        params=(
            _SID,
            {"name": "device_id", "in": "path", "required": True, "schema": ID},
            {
                "name": "revoke",
                "in": "query",
                "required": False,
                "schema": {"enum": ["true", "false"]},
            },
        ),
        errors=(422, 429),
    ),
    (_SESSION, "delete"): _op(
        "Delete the session (service role; close 4410)", _NO_CONTENT, errors=(429,)
    ),
    (f"{_SESSION}/handoff", "post"): _op(
        "Mint a single-use handoff ticket (device token)",
        {"201": _json(ref("HandoffTicket"), "the ticket")},
        body=(JSON_TYPE, "HandoffCreate"),
        body_required=False,
        errors=(413, 415, 422, 429),
    ),
    ("/v1/handoff/claim", "post"): _op(
        "Claim a handoff ticket with a token of the same user",
        {"200": _json(ref("HandoffClaimed"), "a device token for the session")},
        params=(),
        body=(JSON_TYPE, "HandoffClaim"),
        errors=(410, 413, 415, 422, 429),
    ),
    ("/v1/tokens/revoke", "post"): _op(
        "Revoke a token (jti) or a device's tokens issued until now",
        {"200": _json(ref("Revoked"), "revoked")},
        params=(),
        body=(JSON_TYPE, "TokenRevoke"),
        errors=(413, 415, 422, 429),
    ),
    ("/v1/openapi.json", "get"): _op(
        "This document",
        {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        params=(),
        security=False,
    ),
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), operation in OPERATIONS.items():
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SyncBridge HTTP API",
            "version": __version__,
            "description": "Session state over authenticated REST (docs/http-api.md).",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


_DOCUMENT: Final = orjson.dumps(document())


async def get_openapi(request: Request, ctx: ApiContext) -> Response:
    """The document (no token needed)."""
    return Response(_DOCUMENT, media_type=JSON_TYPE, headers={"cache-control": "no-cache"})
