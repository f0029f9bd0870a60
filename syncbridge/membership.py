"""Joining and leaving a session: Auth, Resume, and the clean-up when a socket goes.

The membership half of :class:`syncbridge.service.SessionService` (its base class):
verifying the token (claims, revocation), the caps a join must pass (sockets per
device, devices per session), presence, watching the session's events, renewal
(``new_token``), Resume by version, and forgetting a connection when it closes.
Shared by both halves: the server clock and the frames they send.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import trio

from syncbridge.auth import Claims, TokenAuthority
from syncbridge.broker import Broker
from syncbridge.control import PeerRegistry
from syncbridge.errors import (
    AuthenticationError,
    CloseCode,
    LimitExceeded,
    RequestError,
    StoreUnavailable,
)
from syncbridge.hub import Hub, Outbox
from syncbridge.limits import DeviceBuckets
from syncbridge.metrics import Metrics
from syncbridge.observe import Observer
from syncbridge.presence import PresenceStore
from syncbridge.protocol.codec import encode, error_payload
from syncbridge.protocol.messages import AuthRequest, MessageType
from syncbridge.protocol.session import Snapshot, TokenBucket
from syncbridge.refusals import RefusalLog
from syncbridge.store.base import Store

__all__ = ["Membership", "Peer", "snapshot_payload"]

log = logging.getLogger("syncbridge.service")


class Peer(Protocol):
    """What the service needs of a connection."""

    key: int
    claims: Claims | None
    outbox: Outbox
    device_type: str | None
    device_name: str | None

    def authorize_until(self, expires_at: int) -> None:
        """The connection's identity is valid until ``expires_at`` (Unix s) unless refreshed."""
        ...

    def close(self, code: CloseCode, reason: str) -> None:
        """End the connection with a close code."""
        ...

    def share_rate_limit(self, bucket: TokenBucket) -> None:
        """From now on, count messages against ``bucket`` (the device's, shared)."""
        ...


class Membership:
    """Auth, Resume and leaving, over the service's parts (set by SessionService)."""

    metrics: Metrics
    store: Store
    hub: Hub
    presence: PresenceStore
    broker: Broker
    authority: TokenAuthority
    refusals: RefusalLog
    device_buckets: DeviceBuckets
    observer: Observer
    peers: PeerRegistry
    clock: Callable[[], float]
    _auth_refusals: RefusalLog
    _token_ttl: float
    _token_max_lifetime: float
    _max_sockets_per_device: int
    _leave_timeout: float
    _last_time: int

    def now(self) -> int:
        """Server time in Unix seconds, never going backwards (v1: server_time)."""
        self._last_time = max(self._last_time, int(self.clock()))
        return self._last_time

    async def _reply(
        self, peer: Peer, msg_type: MessageType, payload: dict[str, Any], cid: Any
    ) -> None:
        frame = encode(msg_type, payload, timestamp=self.now(), correlation_id=cid)
        await self.hub.send(peer.outbox, frame)

    async def _authenticate(self, peer: Peer, request: AuthRequest, cid: Any) -> None:
        now = self.clock()
        try:
            claims = self.authority.verify(request.token, now=now)
        except AuthenticationError as exc:
            # The log sample is bounded: a client can send a refused token with
            # every message.
            self._auth_refusals.refuse(
                exc.reason, "token for connection %d: %s", peer.key, exc.message
            )
            await self._reply(
                peer, MessageType.AUTH_FAILURE, {"code": 401, "message": exc.message}, cid
            )
            return
        try:
            revoked = await self.is_revoked(claims)
        except StoreUnavailable as exc:
            await self._refuse_auth(peer, exc, cid)
            return
        if revoked:
            self._auth_refusals.refuse("revoked", "token for connection %d: revoked", peer.key)
            await self._reply(
                peer, MessageType.AUTH_FAILURE, {"code": 401, "message": "token is revoked"}, cid
            )
            return
        previous = peer.claims
        if previous is not None and (
            previous.session_id,
            previous.device_id,
            previous.user_id,
        ) != (claims.session_id, claims.device_id, claims.user_id):
            await self._reply(
                peer,
                MessageType.AUTH_FAILURE,
                {
                    "code": 401,
                    "message": "token is for another identity than this connection's; "
                    "open a new connection for it",
                },
                cid,
            )
            return
        if previous is None:
            sockets = self.hub.device_connections(claims.session_id, claims.device_id)
            if sockets >= self._max_sockets_per_device:
                self.refusals.refuse(
                    "socket_cap",
                    "device %s of session %s already has %d sockets (connection %d)",
                    claims.device_id,
                    claims.session_id,
                    sockets,
                    peer.key,
                )
                limit = self._max_sockets_per_device
                await self._refuse_auth(
                    peer,
                    LimitExceeded(
                        f"this device already has {sockets} open sockets in this session "
                        f"(limit {limit}); close one first",
                        status=429,
                        error_code="TOO_MANY_SOCKETS",
                        details={"limit_sockets": limit},
                    ),
                    cid,
                )
                return
        device_type = request.device_type or peer.device_type
        device_name = request.device_name or peer.device_name
        joined = self._broadcast_frame(
            claims,
            MessageType.DEVICE_JOINED,
            {
                "device_id": claims.device_id,
                "user_id": claims.user_id,
                "device_type": device_type,
                "device_name": device_name,
                "connected_at": self.now(),
            },
        )
        if previous is None:
            # Receive the session's events in this process before joining, so
            # nothing that happens after AuthSuccess can be missed.
            try:
                await self.broker.watch(claims.session_id)
            except StoreUnavailable as exc:
                await self._refuse_auth(peer, exc, cid)
                return
        try:
            # join() is idempotent for a connection already joined: a refresh
            # only updates the device's description.
            with self.metrics.store_operation("presence_join"):
                came_online = await self.presence.join(
                    claims.session_id,
                    device_id=claims.device_id,
                    user_id=claims.user_id,
                    connection=peer.key,
                    device_type=device_type,
                    device_name=device_name,
                    now=self.now(),
                    announce=joined,
                )
        except (LimitExceeded, StoreUnavailable) as exc:
            if previous is None:
                with contextlib.suppress(StoreUnavailable):
                    await self.broker.unwatch(claims.session_id)
            await self._refuse_auth(peer, exc, cid)
            return
        except BaseException:
            if previous is None:
                with trio.CancelScope(shield=True):
                    await self.broker.unwatch(claims.session_id)
            raise
        if previous is None:
            self.hub.subscribe(claims.session_id, peer.key, peer.outbox, device_id=claims.device_id)
            peer.share_rate_limit(self.device_buckets.acquire(claims.session_id, claims.device_id))
        peer.claims = claims
        self.peers.add(peer)
        peer.device_type = device_type
        peer.device_name = device_name
        renewed = self._renew(claims, now, peer)
        # The socket stays authorised as long as the token it was just handed
        # (decision 0005), or, when none was, as long as the presented one: that
        # is what expires_at tells the client.
        expires_at = renewed[1] if renewed else claims.expires_at
        peer.authorize_until(expires_at)
        success: dict[str, Any] = {"new_token": renewed[0]} if renewed else {}
        success.update(
            expires_at=expires_at,
            device_id=claims.device_id,
            session_id=claims.session_id,
            user_id=claims.user_id,
        )
        await self._reply(peer, MessageType.AUTH_SUCCESS, success, cid)
        if came_online:
            log.info(
                "device %s joined session %s (connection %d)",
                claims.device_id,
                claims.session_id,
                peer.key,
            )
            if not self.presence.publishes:
                await self.broker.publish(
                    claims.session_id, joined, exclude_device=claims.device_id
                )
        if request.last_version is not None:
            await self._resume(peer, claims, request.last_version, cid)

    def _renew(self, claims: Claims, now: float, peer: Peer) -> tuple[str, int] | None:
        """The new_token for an accepted Auth, or None when it must not be renewed.

        Operator tokens (admin, metrics, service) are never renewed over /ws: a
        leaked short-lived operator token must not become a renewable one. Device
        tokens are renewed up to TOKEN_MAX_LIFETIME after the original sign-in.
        """
        if claims.is_operator:
            self.refusals.refuse(
                "renewal_operator_role", "no new_token for connection %d", peer.key
            )
            return None
        renewed = self.authority.refresh(
            claims, ttl=self._token_ttl, now=now, max_lifetime=self._token_max_lifetime
        )
        if renewed is None:
            self.refusals.refuse("renewal_max_lifetime", "no new_token for connection %d", peer.key)
        return renewed

    async def _refuse_auth(self, peer: Peer, exc: RequestError, cid: Any) -> None:
        # Still an answer to Auth (not an Error), so v1 clients waiting for 8 or 9
        # get one; the code says why (429 device limit, 503 store unavailable).
        payload = error_payload(exc.status, exc.error_code, exc.message, exc.details)
        await self._reply(peer, MessageType.AUTH_FAILURE, payload, cid)

    async def _resume(self, peer: Peer, claims: Claims, since: int, cid: Any) -> None:
        """Resume (15): exactly the changes after ``since``, or a snapshot.

        The store decides before reading or decoding anything: a snapshot when
        its history no longer reaches back to ``since`` or the replay's stored
        size exceeds its budget (MAX_STATE_BYTES), so one resume of a large
        history never holds the event loop or the store for long.
        """
        with self.metrics.store_operation("changes_since"):
            changes = await self.store.changes_since(claims.session_id, since)
        payload: dict[str, Any]
        if changes is not None:
            self.metrics.resumes.labels(mode="changes").inc()
            payload = {
                "mode": "changes",
                "from_version": since,
                "version": changes[-1].version if changes else since,
                "changes": [c.describe() for c in changes],
            }
            await self._reply(peer, MessageType.RESUME, payload, cid)
            return
        self.metrics.resumes.labels(mode="snapshot").inc()
        with self.metrics.store_operation("snapshot"):
            snap = await self.store.snapshot(claims.session_id)
        payload = {
            "mode": "snapshot",
            "from_version": since,
            "version": snap.version,
            "snapshot": snapshot_payload(snap),
        }
        await self._reply(peer, MessageType.RESUME, payload, cid)

    def _broadcast_frame(
        self,
        claims: Claims,
        msg_type: MessageType,
        payload: dict[str, Any] | orjson.Fragment,
        cid: Any = None,
    ) -> str:
        return encode(
            msg_type,
            payload,
            timestamp=self.now(),
            session_id=claims.session_id,
            user_id=claims.user_id,
            device_id=claims.device_id,
            correlation_id=cid,
        )

    async def is_revoked(self, claims: Claims) -> bool:
        """Whether the token was revoked (by its jti, or all of its device's tokens)."""
        with self.metrics.store_operation("revocation"):
            return await self.store.is_revoked(
                token_id=claims.token_id,
                session_id=claims.session_id,
                device_id=claims.device_id,
                issued_at=claims.issued_at,
            )

    def touch(self, peer: Peer) -> None:
        """Record a sign of life for the peer's device."""
        if peer.claims is not None:
            self.presence.touch(peer.claims.session_id, peer.claims.device_id, self.now())

    async def disconnect(self, peer: Peer) -> None:
        """Forget a closing connection and tell the other devices if its device left.

        Runs in the connection's shielded, bounded clean-up; never raises. If the
        store is unreachable, the presence entry expires by itself instead.
        """
        claims = peer.claims
        if claims is None:
            return
        self.peers.discard(peer.key)
        self.hub.unsubscribe(claims.session_id, peer.key)
        self.device_buckets.release(claims.session_id, claims.device_id)
        self.observer.closed(claims.session_id, claims.device_id, getattr(peer, "close_code", None))
        now = self.now()
        left = self._broadcast_frame(
            claims,
            MessageType.DEVICE_LEFT,
            {"device_id": claims.device_id, "user_id": claims.user_id, "last_seen": now},
        )
        try:
            with self.metrics.store_operation("presence_leave"):
                went_offline = await self.presence.leave(
                    claims.session_id,
                    device_id=claims.device_id,
                    user_id=claims.user_id,
                    connection=peer.key,
                    now=now,
                    announce=left,
                )
            if went_offline:
                log.info("device %s left session %s", claims.device_id, claims.session_id)
                if not self.presence.publishes:
                    await self.broker.publish(claims.session_id, left, timeout=self._leave_timeout)
        except StoreUnavailable as exc:
            log.warning("presence of connection %d not removed: %s", peer.key, exc.message)
        finally:
            try:
                await self.broker.unwatch(claims.session_id)
            except StoreUnavailable as exc:
                log.warning("unwatch of %s failed: %s", claims.session_id, exc.message)


def snapshot_payload(snap: Snapshot) -> dict[str, Any]:
    """The SnapshotResponse payload (also a Resume's snapshot)."""
    return {
        "session_id": snap.session_id,
        "state_data": snap.state_json(),
        "created_at": snap.created_at,
        "updated_at": snap.updated_at,
        "version": snap.version,
    }
