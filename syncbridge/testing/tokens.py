"""Token minting for tests: device, service and operator tokens signed with a server's secret."""

from __future__ import annotations

import time

import attrs

from syncbridge.auth import ADMIN_ROLE, METRICS_ROLE, SERVICE_ROLE, TokenAuthority

__all__ = ["TokenMinter"]


@attrs.frozen(kw_only=True)
class TokenMinter:
    """Mints tokens the server holding ``secret`` accepts.

    ``session`` is the session a token is for when a call does not name one;
    ``ttl`` its lifetime in seconds. Tokens carry wall-clock times (JWT ``exp``
    is absolute UNIX time), so a mock trio clock does not age them: to test
    expiry, pass ``now`` in the past or a short ``ttl``.
    """

    secret: str = attrs.field(repr=False)
    session: str = "s1"
    ttl: float = 900.0

    def token(
        self,
        *,
        user: str = "u1",
        device: str = "d1",
        session: str | None = None,
        roles: tuple[str, ...] = (),
        ttl: float | None = None,
        now: float | None = None,
    ) -> str:
        """A token for ``user`` on ``device`` in ``session`` with ``roles``."""
        token, _ = TokenAuthority(self.secret).mint(
            user_id=user,
            device_id=device,
            session_id=self.session if session is None else session,
            ttl=self.ttl if ttl is None else ttl,
            roles=roles,
            now=time.time() if now is None else now,
        )
        return token

    def device(
        self,
        device: str = "d1",
        *,
        user: str = "u1",
        session: str | None = None,
        ttl: float | None = None,
        now: float | None = None,
    ) -> str:
        """A device's token (no roles): what an application's client signs in with."""
        return self.token(user=user, device=device, session=session, ttl=ttl, now=now)

    def service(
        self,
        *,
        user: str = "backend",
        device: str = "service",
        session: str | None = None,
        ttl: float | None = None,
    ) -> str:
        """A back end's token (role ``service``)."""
        return self.token(user=user, device=device, session=session, roles=(SERVICE_ROLE,), ttl=ttl)

    def admin(
        self,
        *,
        user: str = "ops",
        device: str = "cli",
        session: str = "ops",
        ttl: float | None = None,
    ) -> str:
        """An operator's token (role ``admin``): ``/metrics``, ``/debug/*``, ``/admin/*``."""
        return self.token(user=user, device=device, session=session, roles=(ADMIN_ROLE,), ttl=ttl)

    def metrics(
        self,
        *,
        user: str = "ops",
        device: str = "cli",
        session: str = "ops",
        ttl: float | None = None,
    ) -> str:
        """A monitoring token (role ``metrics``): ``/metrics`` and ``/health/details``."""
        return self.token(user=user, device=device, session=session, roles=(METRICS_ROLE,), ttl=ttl)
