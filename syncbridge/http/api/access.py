"""Who is calling: Bearer tokens, device vs service role, per-session access.

Answers never depend on whether a session exists: a device token naming any
other session gets the same 403 whether that session was ever written or not.
"""

from __future__ import annotations

import hashlib
from typing import Final

from starlette.requests import Request

from syncbridge.auth import Claims, TokenAuthority
from syncbridge.errors import AuthenticationError
from syncbridge.http.api.problem import Problem
from syncbridge.metrics import Metrics

__all__ = ["Caller", "authenticate", "require_service", "require_session", "unauthorized"]

_MAX_SESSION_ID_CHARS: Final = 256


class Caller:
    """A verified token: its claims, and the key its rate budget is kept under."""

    def __init__(self, claims: Claims, token: str) -> None:
        self.claims = claims
        # The jti names a token; a token without one is named by its hash.
        self.budget_key = claims.token_id or hashlib.sha256(token.encode()).hexdigest()


def unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "UNAUTHENTICATED",
        detail,
        headers={"www-authenticate": 'Bearer realm="syncbridge"'},
    )


def authenticate(
    request: Request, authority: TokenAuthority, *, now: float, metrics: Metrics
) -> Caller:
    """The caller of ``request``, or a 401 problem."""
    header = request.headers.get("authorization")
    if header is None:
        raise unauthorized("send Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("the Authorization header must be: Bearer <token>")
    token = token.strip()
    try:
        claims = authority.verify(token, now=now)
    except AuthenticationError as exc:
        metrics.auth_failures.labels(reason=exc.reason).inc()
        raise unauthorized(exc.message) from None
    return Caller(claims, token)


def require_session(caller: Caller, session_id: str) -> None:
    """A service token reaches any session; a device token only its own (else 403)."""
    claims = caller.claims
    if not claims.is_service and claims.session_id != session_id:
        raise Problem(403, "FORBIDDEN", "this token does not grant access to that session")
    if not session_id.isprintable() or len(session_id) > _MAX_SESSION_ID_CHARS:
        raise Problem(
            400,
            "INVALID_SESSION_ID",
            f"a session id is 1 to {_MAX_SESSION_ID_CHARS} printable characters",
        )


def require_service(caller: Caller) -> None:
    """Only a service token (role ``service``) may do this (else 403)."""
    if not caller.claims.is_service:
        raise Problem(403, "FORBIDDEN", "this needs a service token (role service)")
