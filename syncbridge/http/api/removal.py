"""Removing things: a session (service role), a device (kick, ``?revoke=true``), tokens.

Each removal is stored first (so every process refuses what was removed), then
a close order goes to every process, which closes the matching sockets with a
documented close code; DeviceLeft reaches the remaining devices through the
ordinary disconnect path.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from syncbridge.control import CloseOrder
from syncbridge.errors import CloseCode
from syncbridge.http.api.access import require_service, require_session
from syncbridge.http.api.body import read_json, structure
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.problem import Problem
from syncbridge.http.api.schemas import TokenRevoke
from syncbridge.http.api.state import JSON, json_response

__all__ = ["delete_session", "remove_device", "revoke_tokens"]


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise Problem(422, "INVALID_QUERY", f"the query parameter {name} must be true or false")
    return raw in ("true", "1")


async def delete_session(request: Request, ctx: ApiContext) -> Response:
    """Service role: state, history and snapshots gone; every socket of it closed (4410)."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    require_service(caller)
    ctx.charge_write(caller)
    async with ctx.service.locks.hold(session_id):
        with ctx.metrics.store_operation("session_delete"):
            await ctx.service.store.delete_session(session_id)
    await ctx.service.close_everywhere(
        CloseOrder(code=CloseCode.SESSION_DELETED, reason="session deleted", session_id=session_id)
    )
    return Response(status_code=204, headers={"cache-control": "no-store"})


async def remove_device(request: Request, ctx: ApiContext) -> Response:
    """Close a device's sockets (4409, or 4402 with ``?revoke=true``, which also
    refuses every token of the device issued until now)."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    device_id = request.path_params["device_id"]
    require_session(caller, session_id)
    revoke = _flag(request, "revoke")
    ctx.charge_write(caller)
    with ctx.metrics.store_operation("presence_devices"):
        known = {d["device_id"]: d for d in await ctx.service.presence.devices(session_id)}
    device = known.get(device_id)
    if not caller.claims.is_service:
        if device is None:
            raise Problem(404, "DEVICE_NOT_FOUND", f"no device {device_id!r} in this session")
        if device.get("user_id") != caller.claims.user_id:
            raise Problem(403, "FORBIDDEN", "only the device's own user or a service may remove it")
    elif device is None and not revoke:
        raise Problem(404, "DEVICE_NOT_FOUND", f"no device {device_id!r} in this session")
    now = ctx.service.now()
    code = CloseCode.DEVICE_REMOVED
    if revoke:
        code = CloseCode.TOKEN_REVOKED
        await ctx.service.store.revoke(
            until=now + int(ctx.settings.revocation_retention),
            session_id=session_id,
            device_id=device_id,
            issued_before=now,
        )
    await ctx.service.close_everywhere(
        CloseOrder(
            code=code,
            reason="device removed from the session",
            session_id=session_id,
            device_id=device_id,
            # A revocation covers the tokens issued until now, not later ones.
            issued_before=now if revoke else None,
        )
    )
    return Response(status_code=204, headers={"cache-control": "no-store"})


async def revoke_tokens(request: Request, ctx: ApiContext) -> Response:
    """Revoke one token (jti) or a device's tokens issued until now; close their sockets."""
    caller = await ctx.caller(request)
    ctx.charge_write(caller)
    body = structure(
        await read_json(request, limit=ctx.settings.http_max_body_bytes, media_types=JSON),
        TokenRevoke,
    )
    claims = caller.claims
    now = ctx.service.now()
    retention = now + int(ctx.settings.revocation_retention)
    if body.jti is not None:
        if not claims.is_service and body.jti != claims.token_id:
            raise Problem(403, "FORBIDDEN", "a device token may revoke only itself")
        until = min(body.expires_at, retention) if body.expires_at is not None else retention
        if until > now:
            await ctx.service.store.revoke(until=until, token_id=body.jti)
        order = CloseOrder(code=CloseCode.TOKEN_REVOKED, reason="token revoked", token_id=body.jti)
    else:
        assert body.session_id is not None
        assert body.device_id is not None
        if not claims.is_service and (body.session_id, body.device_id) != (
            claims.session_id,
            claims.device_id,
        ):
            raise Problem(403, "FORBIDDEN", "a device token may revoke only its own device")
        until = retention
        await ctx.service.store.revoke(
            until=until,
            session_id=body.session_id,
            device_id=body.device_id,
            issued_before=now,
        )
        order = CloseOrder(
            code=CloseCode.TOKEN_REVOKED,
            reason="token revoked",
            session_id=body.session_id,
            device_id=body.device_id,
            issued_before=now,
        )
    await ctx.service.close_everywhere(order)
    return json_response({"revoked": True, "until": max(until, now)})
