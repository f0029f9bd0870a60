"""Handoff: a device mints a single-use ticket; another device of the same user claims it.

The ticket is 256 random bits, returned once and stored only as its SHA-256
in the shared store (any process can redeem it), with the session, user and
source device and an expiry; it carries no copy of the state: the claimer
gets a device token and reads the state through it.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from syncbridge.control import Delivery
from syncbridge.http.api.access import require_session
from syncbridge.http.api.body import read_json, structure
from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.problem import Problem
from syncbridge.http.api.schemas import HandoffClaim, HandoffCreate
from syncbridge.http.api.state import JSON, json_response
from syncbridge.protocol.codec import encode
from syncbridge.protocol.messages import MessageType

__all__ = ["claim_handoff", "create_handoff"]


def _hash(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


async def create_handoff(request: Request, ctx: ApiContext) -> Response:
    """A device token's single-use ticket for its own session (201)."""
    caller = await ctx.caller(request)
    session_id = request.path_params["sid"]
    require_session(caller, session_id)
    claims = caller.claims
    if claims.is_service or claims.session_id != session_id:
        raise Problem(403, "FORBIDDEN", "a handoff starts from a device token of this session")
    ctx.charge_write(caller)
    data = await read_json(
        request, limit=ctx.settings.http_max_body_bytes, media_types=JSON, empty={}
    )
    body = structure(data, HandoffCreate)
    now = ctx.service.now()
    ticket = secrets.token_urlsafe(32)
    expires_at = now + body.ttl
    record = orjson.dumps(
        {
            "session_id": session_id,
            "user_id": claims.user_id,
            "device_id": claims.device_id,
            "created_at": now,
            "expires_at": expires_at,
        }
    )
    with ctx.metrics.store_operation("handoff_put"):
        await ctx.service.store.put_ticket(_hash(ticket), record, expires_at=expires_at)
    return json_response(
        {"ticket": ticket, "expires_at": expires_at, "session_id": session_id}, status=201
    )


async def claim_handoff(request: Request, ctx: ApiContext) -> Response:
    """Redeem a ticket with a token of the same user: a device token for its session."""
    caller = await ctx.caller(request)
    ctx.charge_write(caller)
    body = structure(
        await read_json(request, limit=ctx.settings.http_max_body_bytes, media_types=JSON),
        HandoffClaim,
    )
    claims = caller.claims
    with ctx.metrics.store_operation("handoff_claim"):
        status, record = await ctx.service.store.claim_ticket(_hash(body.ticket), claims.user_id)
    if status == "OTHER_USER":
        raise Problem(403, "FORBIDDEN", "this ticket belongs to another user")
    if status != "OK" or record is None:
        raise Problem(
            410, "HANDOFF_GONE", "the ticket was already claimed, has expired or does not exist"
        )
    ticket: dict[str, Any] = orjson.loads(record)
    session_id = ticket["session_id"]
    now = ctx.service.now()
    token, expires_at = ctx.service.authority.mint(
        user_id=claims.user_id,
        device_id=body.device_id,
        session_id=session_id,
        ttl=ctx.settings.token_ttl,
        now=now,
    )
    version = (await ctx.writer.read(session_id)).version
    notice = encode(
        MessageType.BROADCAST,
        {
            "event": "handoff_claimed",
            "device_id": body.device_id,
            "user_id": claims.user_id,
            "version": version,
            "claimed_at": now,
        },
        timestamp=now,
        session_id=session_id,
        user_id=claims.user_id,
        device_id=body.device_id,
    )
    await ctx.service.deliver_everywhere(
        Delivery(session_id=session_id, device_id=ticket["device_id"], frame=notice)
    )
    return json_response(
        {
            "token": token,
            "expires_at": expires_at,
            "session_id": session_id,
            "user_id": claims.user_id,
            "device_id": body.device_id,
            "version": version,
        }
    )
