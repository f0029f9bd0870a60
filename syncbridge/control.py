"""Control messages for authenticated sockets wherever they are: close orders (kick,
delete, revoke) and deliveries to one device (handoff notices).

A message travels through the broker's control path (Redis: one channel every
process subscribes to) and each process acts on its own matching connections
(:class:`PeerRegistry`).
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Final, Protocol

import attrs
import orjson
import trio

from syncbridge.auth import Claims
from syncbridge.errors import CloseCode
from syncbridge.hub import Outbox

__all__ = ["Closable", "CloseOrder", "Delivery", "PeerRegistry"]

log = logging.getLogger(__name__)

#: How long revocation orders are remembered for connections that finish their
#: Auth just after the order went by (their revocation check ran before the
#: revocation was stored). Seconds.
REVOCATION_MEMORY: Final = 60.0


class Closable(Protocol):
    """What a close order needs of a connection."""

    key: int
    claims: Claims | None
    outbox: Outbox

    def close(self, code: CloseCode, reason: str) -> None:
        """End the connection with a close code."""
        ...


@attrs.frozen(kw_only=True)
class CloseOrder:
    """Close every socket whose token matches all the given criteria."""

    code: CloseCode
    reason: str
    session_id: str | None = None
    device_id: str | None = None
    token_id: str | None = None
    #: Only tokens issued at or before this Unix second (device revocation).
    issued_before: int | None = None

    def matches(self, claims: Claims) -> bool:
        """Whether a socket authenticated with ``claims`` must close."""
        if self.session_id is not None and claims.session_id != self.session_id:
            return False
        if self.device_id is not None and claims.device_id != self.device_id:
            return False
        if self.token_id is not None and claims.token_id != self.token_id:
            return False
        return self.issued_before is None or (
            claims.issued_at is None or claims.issued_at <= self.issued_before
        )

    def encode(self) -> bytes:
        """The order on the wire (JSON)."""
        return orjson.dumps({**attrs.asdict(self), "code": int(self.code), "kind": "close"})

    @classmethod
    def decode(cls, raw: bytes) -> CloseOrder:
        """An order from :meth:`encode`; ValueError/TypeError/KeyError when it is not one."""
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            code=CloseCode(data["code"]),
            reason=str(data["reason"]),
            session_id=data.get("session_id"),
            device_id=data.get("device_id"),
            token_id=data.get("token_id"),
            issued_before=data.get("issued_before"),
        )


@attrs.frozen(kw_only=True)
class Delivery:
    """A frame for every socket of one device of one session."""

    session_id: str
    device_id: str
    frame: str

    def encode(self) -> bytes:
        """The delivery on the wire (JSON)."""
        return orjson.dumps({**attrs.asdict(self), "kind": "deliver"})

    @classmethod
    def decode(cls, raw: bytes) -> Delivery:
        """A delivery from :meth:`encode`."""
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            session_id=str(data["session_id"]),
            device_id=str(data["device_id"]),
            frame=str(data["frame"]),
        )


class PeerRegistry:
    """This process's authenticated connections, closed by orders from any process."""

    def __init__(self) -> None:
        self._peers: dict[int, Closable] = {}
        self._revocations: collections.deque[tuple[float, CloseOrder]] = collections.deque()

    def __len__(self) -> int:
        return len(self._peers)

    def add(self, peer: Closable) -> None:
        """An authenticated connection (closed at once if a recent revocation names it)."""
        self._peers[peer.key] = peer
        now = trio.current_time()
        while self._revocations and self._revocations[0][0] < now - REVOCATION_MEMORY:
            self._revocations.popleft()
        claims = peer.claims
        for _at, order in self._revocations:
            if claims is not None and order.matches(claims):
                peer.close(order.code, order.reason)
                return

    def discard(self, key: int) -> None:
        """A closing connection."""
        self._peers.pop(key, None)

    def close_matching(self, order: CloseOrder) -> int:
        """Close the connections that match ``order``; return how many."""
        if order.code is CloseCode.TOKEN_REVOKED:
            # A revoked token stays refused: remember it for connections whose
            # Auth passed its revocation check just before the revocation was stored.
            self._revocations.append((trio.current_time(), order))
        closing = [
            peer
            for peer in self._peers.values()
            if peer.claims is not None and order.matches(peer.claims)
        ]
        for peer in closing:
            peer.close(order.code, order.reason)
        if closing:
            log.info("closed %d connections (%s): %s", len(closing), order.code.name, order.reason)
        return len(closing)

    def deliver(self, delivery: Delivery) -> int:
        """Offer the frame to the device's sockets here; one that has no room is
        closed as a slow consumer (it resyncs), never silently skipped."""
        count = 0
        for peer in list(self._peers.values()):
            claims = peer.claims
            if claims is None or (claims.session_id, claims.device_id) != (
                delivery.session_id,
                delivery.device_id,
            ):
                continue
            if not peer.outbox.offer(delivery.frame):
                peer.outbox.close_slow()
            count += 1
        return count

    def handle(self, message: bytes) -> None:
        """A control message from the broker."""
        try:
            kind = orjson.loads(message).get("kind")
            if kind == "deliver":
                self.deliver(Delivery.decode(message))
            else:
                self.close_matching(CloseOrder.decode(message))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Anyone who can PUBLISH to Redis can send one: never stop the relay for it.
            log.warning("ignored a malformed control message: %s", exc)
