"""GET /v1/sessions/{sid}/devices: the devices online now, across every process."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from syncbridge.http.api.access import require_session
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.state import json_response

__all__ = ["list_devices"]


async def list_devices(request: Request, ctx: ApiContext) -> Response:
    """Online devices (presence is shared in Redis, so this covers every process)."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    with ctx.metrics.store_operation("presence_devices"):
        known = await ctx.service.presence.devices(session_id)
    online = [d for d in known if d.get("is_online")]
    return json_response({"session_id": session_id, "devices": online, "count": len(online)})
