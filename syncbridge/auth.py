"""JWT verification and minting (HS256); the only module that imports pyjwt."""

from __future__ import annotations

import secrets
from typing import Any, Final

import attrs
import jwt

from syncbridge.errors import AuthenticationError

__all__ = ["ADMIN_ROLE", "Claims", "TokenAuthority"]

ADMIN_ROLE: Final = "admin"
_ALGORITHM: Final = "HS256"
_REQUIRED: Final = ("user_id", "device_id", "session_id")
_MAX_ID_CHARS: Final = 256


@attrs.frozen(kw_only=True)
class Claims:
    """The verified identity a token carries."""

    user_id: str
    device_id: str
    session_id: str
    expires_at: int
    issued_at: int | None = None
    email: str | None = None
    roles: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        """Admin rights come only from the token's roles."""
        return ADMIN_ROLE in self.roles


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
                options={"require": ["exp"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature is invalid", reason="signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token has no {exc.claim} claim", reason="claims") from None
        except jwt.DecodeError:
            raise AuthenticationError("token is malformed", reason="malformed") from None
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"token is invalid: {exc}", reason="invalid") from None
        exp = raw.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthenticationError("token exp must be a number", reason="claims")
        # Checked here rather than by pyjwt so that "now" comes from the caller
        # (tests use a fake clock) and the message can say when it expired.
        if exp + self._leeway <= now:
            raise AuthenticationError(f"token expired at {int(exp)}", reason="expired")
        values: dict[str, str] = {}
        for name in _REQUIRED:
            value = raw.get(name)
            if not isinstance(value, str) or not value or len(value) > _MAX_ID_CHARS:
                raise AuthenticationError(
                    f"token claim {name} must be a non-empty string", reason="claims"
                )
            values[name] = value
        roles = raw.get("roles") or ()
        if isinstance(roles, str):
            roles = (roles,)
        if not isinstance(roles, list | tuple) or not all(isinstance(r, str) for r in roles):
            raise AuthenticationError("token roles must be a list of strings", reason="claims")
        email = raw.get("email")
        iat = raw.get("iat")
        return Claims(
            user_id=values["user_id"],
            device_id=values["device_id"],
            session_id=values["session_id"],
            expires_at=int(exp),
            issued_at=int(iat) if isinstance(iat, int | float) else None,
            email=email if isinstance(email, str) else None,
            roles=tuple(roles),
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
    ) -> tuple[str, int]:
        """Sign a new token; return it with its expiry (Unix seconds).

        Every token gets a random ``jti``, so a refreshed token always differs
        from the one presented, even within the same second.
        """
        expires_at = int(now + ttl)
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
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM), expires_at

    def refresh(self, claims: Claims, *, ttl: float, now: float) -> tuple[str, int]:
        """A fresh token for the same identity and roles."""
        return self.mint(
            user_id=claims.user_id,
            device_id=claims.device_id,
            session_id=claims.session_id,
            roles=claims.roles,
            email=claims.email,
            ttl=ttl,
            now=now,
        )
