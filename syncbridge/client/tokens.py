"""Which token a synchronised client presents, and when it must refresh it.

Each AuthSuccess brings a ``new_token`` and its ``expires_at``; the socket
stays authorised until then (docs/protocol.md §4), so the latest ``new_token``
is the one to present, on a refresh and on a reconnect. The application's
``token_provider`` is asked only when there is no usable token: at start
without one, after a refusal, or after expiry (close 4401, a long outage).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = ["TokenKeeper", "TokenProvider"]

TokenProvider = Callable[[], Awaitable[str]]

# A token this close to its expiry is not worth presenting on a reconnect.
_RECONNECT_MARGIN: Final = 5.0


class TokenKeeper:
    """The latest token, its deadline on the local clock, and the provider."""

    def __init__(
        self, token: str | None, provider: TokenProvider | None, *, refresh_margin: float
    ) -> None:
        if token is None and provider is None:
            raise ValueError("give a token, a token_provider, or both")
        self.token = token
        self.provider = provider
        self.deadline: float | None = None  # time.time() when the token expires
        self.lifetime = 0.0
        self.stale = token is None
        self._refresh_margin = refresh_margin

    async def current(self, *, margin: float = _RECONNECT_MARGIN) -> str:
        """The token to present: the latest one, or a fresh one from the provider."""
        if self.provider is not None and (self.stale or self.expiring(margin)):
            self.token = await self.provider()
            self.deadline = None
            self.stale = False
        assert self.token is not None
        return self.token

    def expiring(self, margin: float) -> bool:
        """Whether the token expires within ``margin`` seconds."""
        return self.deadline is not None and self.deadline - time.time() < margin

    def refused(self) -> bool:
        """After a refusal: whether asking the provider for a new token is worth a try."""
        self.stale = True
        return self.provider is not None

    def accepted(self, reply: dict[str, Any]) -> None:
        """Take ``new_token`` and ``expires_at`` from an AuthSuccess message."""
        payload = reply.get("payload") or {}
        self.token = payload.get("new_token", self.token)
        expires_at = payload.get("expires_at")
        server_now = reply.get("timestamp")
        if isinstance(expires_at, int | float) and isinstance(server_now, int | float):
            # Measured on the server's clock, then moved onto ours: clock skew
            # between client and server does not shift the refresh. Both are whole
            # seconds rounded down, so up to a second of the lifetime may be gone.
            self.lifetime = max(0.0, float(expires_at - server_now - 1))
            self.deadline = time.time() + self.lifetime
        self.stale = False

    def refresh_in(self) -> float | None:
        """Seconds until a refresh is due (a margin before expiry), None if unknown."""
        if self.deadline is None:
            return None
        margin = min(self._refresh_margin, self.lifetime / 4)
        return max(0.0, self.deadline - margin - time.time())
