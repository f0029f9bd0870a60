"""JWT verification and minting (HS256); the only module that imports pyjwt.

A correctly signed token is still input from outside: every claim is checked
for type and range here, so nothing downstream (deadlines, metrics, Redis key
and member encodings, logs) ever sees NaN, infinities, floats, booleans, lone
surrogates or control characters (docs/security.md).
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import attrs
import jwt

from syncbridge.errors import AuthenticationError

__all__ = [
    "ADMIN_ROLE",
    "METRICS_ROLE",
    "OPERATOR_ROLES",
    "SERVICE_ROLE",
    "Claims",
    "TokenAuthority",
]

ADMIN_ROLE: Final = "admin"
METRICS_ROLE: Final = "metrics"
SERVICE_ROLE: Final = "service"
#: Roles for operators and back-end services, never for a user's device: their
#: tokens are not renewed over /ws (they come from the operator's own issuer).
OPERATOR_ROLES: Final = frozenset({ADMIN_ROLE, METRICS_ROLE, SERVICE_ROLE})
_ALGORITHM: Final = "HS256"
_REQUIRED: Final = ("user_id", "device_id", "session_id")
_MAX_ID_CHARS: Final = 256
_MAX_ROLES: Final = 32
_MAX_ROLE_CHARS: Final = 64
#: NumericDate claims must be whole seconds within 1970..9999 (RFC 7519 allows
#: fractions, which no issuer we serve sends; refusing them keeps every time an
#: exact int).
_MAX_TIME: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
_TIME_CLAIMS: Final = ("exp", "iat", "nbf", "auth_time")


def _printable(value: object, max_chars: int) -> bool:
    """A non-empty string of at most ``max_chars`` printable characters.

    ``str.isprintable`` is False for control characters (C0, DEL, C1 - the
    ``\\x1f`` separator of Redis presence members among them), lone surrogates,
    format and private-use characters, and separators other than the space.
    """
    return isinstance(value, str) and 0 < len(value) <= max_chars and value.isprintable()


def _numeric_date(raw: dict[str, Any], name: str) -> int | None:
    value = raw.get(name)
    if value is None and name != "exp":  # an optional claim sent as null is absent
        return None
    # bool is an int subclass; JSON's NaN, Infinity and 1e400 arrive as floats.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_TIME:
        raise AuthenticationError(
            f"token {name} must be whole Unix seconds between 0 and {_MAX_TIME}",
            reason="claim_range",
        )
    return value


@attrs.frozen(kw_only=True)
class Claims:
    """The verified identity a token carries."""

    user_id: str
    device_id: str
    session_id: str
    expires_at: int
    issued_at: int | None = None
    #: When the user originally signed in (claim ``auth_time``); carried over on
    #: renewal, it bounds how long a chain of renewed tokens can last.
    auth_time: int | None = None
    email: str | None = None
    roles: tuple[str, ...] = ()
    #: The token's unique id (claim ``jti``), when it has one: what revocation names.
    token_id: str | None = None

    @property
    def is_service(self) -> bool:
        """A back-end service's token: reaches every session over the HTTP API."""
        return SERVICE_ROLE in self.roles

    @property
    def is_admin(self) -> bool:
        """Admin rights come only from the token's roles."""
        return ADMIN_ROLE in self.roles

    @property
    def is_operator(self) -> bool:
        """An operator's or a service's token (admin, metrics or service role)."""
        return not OPERATOR_ROLES.isdisjoint(self.roles)

    @property
    def signed_in_at(self) -> int | None:
        """Start of the sign-in this token belongs to: ``auth_time``, else ``iat``."""
        return self.auth_time if self.auth_time is not None else self.issued_at


class TokenAuthority:
    """Verifies presented tokens and signs new ones with one secret."""

    def __init__(self, secret: str, *, leeway: float = 0.0) -> None:
        self._secret = secret
        self._leeway = leeway

    def verify(self, token: object, *, now: float) -> Claims:
        """Return the token's claims or raise AuthenticationError saying why not."""
        if token is None:
            raise AuthenticationError("token is missing", reason="missing")
        if not isinstance(token, str):
            raise AuthenticationError("token must be a string", reason="malformed")
        if not token:
            raise AuthenticationError("token is empty", reason="missing")
        try:
            raw: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                # Times are checked below (type, range, caller's clock), not by pyjwt,
                # whose nbf check raises a bare ValueError on NaN.
                options={
                    "require": ["exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature is invalid", reason="signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token has no {exc.claim} claim", reason="claims") from None
        except jwt.DecodeError:
            raise AuthenticationError("token is malformed", reason="malformed") from None
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"token is invalid: {exc}", reason="invalid") from None
        times = {name: _numeric_date(raw, name) for name in _TIME_CLAIMS}
        exp = times["exp"]
        assert exp is not None  # _numeric_date refuses a null exp
        # Checked here rather than by pyjwt so that "now" comes from the caller
        # (tests use a fake clock) and the message can say when it expired.
        if exp + self._leeway <= now:
            raise AuthenticationError(f"token expired at {exp}", reason="expired")
        nbf = times["nbf"]
        if nbf is not None and nbf > now + self._leeway:
            raise AuthenticationError(f"token is not valid before {nbf}", reason="not_yet_valid")
        values: dict[str, str] = {}
        for name in _REQUIRED:
            value = raw.get(name)
            if not isinstance(value, str) or not value or len(value) > _MAX_ID_CHARS:
                raise AuthenticationError(
                    f"token claim {name} must be a non-empty string", reason="claims"
                )
            if not value.isprintable():
                raise AuthenticationError(
                    f"token claim {name} must be printable (no control characters, "
                    "no lone surrogates)",
                    reason="claim_chars",
                )
            values[name] = value
        roles = raw.get("roles") or ()
        if isinstance(roles, str):
            roles = (roles,)
        if not isinstance(roles, list | tuple) or not all(isinstance(r, str) for r in roles):
            raise AuthenticationError("token roles must be a list of strings", reason="claims")
        if len(roles) > _MAX_ROLES or not all(_printable(r, _MAX_ROLE_CHARS) for r in roles):
            raise AuthenticationError(
                f"token roles must be at most {_MAX_ROLES} printable strings of at most "
                f"{_MAX_ROLE_CHARS} characters",
                reason="claim_chars",
            )
        email = raw.get("email")
        jti = raw.get("jti")
        return Claims(
            user_id=values["user_id"],
            device_id=values["device_id"],
            session_id=values["session_id"],
            expires_at=exp,
            issued_at=times["iat"],
            auth_time=times["auth_time"],
            # Informational only: an unusable email is dropped, not refused.
            email=email if _printable(email, _MAX_ID_CHARS) else None,
            roles=tuple(roles),
            # An unusable jti is ignored: the token then cannot be revoked by id.
            token_id=jti if _printable(jti, _MAX_ID_CHARS) else None,
        )

    def mint(
        self,
        *,
        user_id: str,
        device_id: str,
        session_id: str,
        ttl: float,
        now: float,
        roles: tuple[str, ...] = (),
        email: str | None = None,
        auth_time: int | None = None,
        expires_at: int | None = None,
    ) -> tuple[str, int]:
        """Sign a new token; return it with its expiry (Unix seconds).

        Every token gets a random ``jti``, so a refreshed token always differs
        from the one presented, even within the same second. ``expires_at``,
        when given, caps the expiry ``now + ttl``.
        """
        expires_at = int(now + ttl) if expires_at is None else min(expires_at, int(now + ttl))
        claims: dict[str, Any] = {
            "user_id": user_id,
            "device_id": device_id,
            "session_id": session_id,
            "iat": int(now),
            "exp": expires_at,
            "jti": secrets.token_urlsafe(12),
        }
        if roles:
            claims["roles"] = list(roles)
        if email is not None:
            claims["email"] = email
        if auth_time is not None:
            claims["auth_time"] = auth_time
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM), expires_at

    def refresh(
        self, claims: Claims, *, ttl: float, now: float, max_lifetime: float | None = None
    ) -> tuple[str, int] | None:
        """A fresh token for the same identity and roles, or None past the max lifetime.

        With ``max_lifetime``, the new token expires no later than ``max_lifetime``
        seconds after the original sign-in (``auth_time``, else ``iat``, else now),
        which it carries over as its ``auth_time``: renewing cannot extend a
        sign-in forever. None when that moment has passed.
        """
        signed_in = claims.signed_in_at if claims.signed_in_at is not None else int(now)
        cap = None if max_lifetime is None else int(signed_in + max_lifetime)
        if cap is not None and cap <= now:
            return None
        return self.mint(
            user_id=claims.user_id,
            device_id=claims.device_id,
            session_id=claims.session_id,
            roles=claims.roles,
            email=claims.email,
            auth_time=signed_in,
            expires_at=cap,
            ttl=ttl,
            now=now,
        )
