"""PATCH /v1/sessions/{sid}/state: RFC 6902 JSON Patch, all or nothing, as one version.

The patch is applied (by the ``jsonpatch`` library, its one home) to the state
document ``{key: value, ...}`` inside the state writer, so it always applies to
the latest state under the session's lock; the result is diffed into per-key
edits and checked against the state limits like any other write.
"""

from __future__ import annotations

from typing import Any, Final

import jsonpatch
import jsonpointer
from starlette.requests import Request
from starlette.responses import Response

from syncbridge.http.api.access import require_session
from syncbridge.http.api.body import read_json
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.problem import Problem
from syncbridge.http.api.state import base_version_of, write_state

__all__ = ["JSON_PATCH", "patch_state"]

JSON_PATCH: Final = ("application/json-patch+json",)


def _invalid(detail: str, index: int | None = None) -> Problem:
    extra = {} if index is None else {"operation": index}
    return Problem(422, "INVALID_PATCH", detail, extra=extra)


def parse_patch(data: Any) -> jsonpatch.JsonPatch:
    """A JSON Patch document: an array of operation objects (422 INVALID_PATCH otherwise)."""
    if not isinstance(data, list):
        raise _invalid("a JSON Patch is an array of operations")
    for index, operation in enumerate(data):
        if not isinstance(operation, dict):
            raise _invalid(f"operation {index} is not an object", index)
        for member in ("path", "from"):
            if member in operation and not isinstance(operation[member], str):
                raise _invalid(f"operation {index}: {member} must be a JSON Pointer string", index)
    try:
        return jsonpatch.JsonPatch(data)
    except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as exc:
        raise _invalid(f"invalid JSON Patch: {exc}") from None


def apply_patch(patch: jsonpatch.JsonPatch, document: dict[str, Any]) -> dict[str, Any]:
    """The document after every operation, or a problem (nothing applied)."""
    try:
        result = patch.apply(document)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise Problem(409, "PATCH_TEST_FAILED", f"a test operation failed: {exc}") from None
    except (
        jsonpatch.JsonPatchException,
        jsonpointer.JsonPointerException,
        TypeError,
        ValueError,
        KeyError,
        IndexError,
    ) as exc:
        raise _invalid(f"the patch does not apply to the state: {exc}") from None
    if not isinstance(result, dict):
        raise _invalid("the state must stay a JSON object")
    return result


async def patch_state(request: Request, ctx: ApiContext) -> Response:
    """Apply a JSON Patch to the state as one new version (If-Match optional)."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    ctx.charge_write(caller)
    data = await read_json(request, limit=ctx.settings.http_max_body_bytes, media_types=JSON_PATCH)
    patch = parse_patch(data)
    base = base_version_of(request, None)
    return await write_state(
        ctx, caller, session_id, lambda current: apply_patch(patch, current), base
    )
