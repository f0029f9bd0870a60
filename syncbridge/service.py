"""Session operations over a Store, a Hub and Presence; knows nothing of WebSockets.

A connection hands every decoded request to :meth:`SessionService.handle`,
which checks authentication, applies it and queues the replies and broadcasts
as encoded frames. Request errors propagate as :class:`RequestError` for the
connection to answer; nothing is changed when one is raised.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import orjson
import trio

from syncbridge.auth import Claims, TokenAuthority
from syncbridge.broker import Broker
from syncbridge.control import CloseOrder, Delivery, PeerRegistry
from syncbridge.errors import (
    AuthenticationError,
    CloseCode,
    LimitExceeded,
    NotAuthenticated,
    PermissionDenied,
    RequestError,
    StoreUnavailable,
)
from syncbridge.hub import Hub, Outbox
from syncbridge.limits import DeviceBuckets
from syncbridge.metrics import Metrics
from syncbridge.observe import Observer
from syncbridge.presence import PresenceStore
from syncbridge.protocol.codec import encode, error_payload
from syncbridge.protocol.messages import (
    PROTECTED_TYPES,
    AuthRequest,
    Envelope,
    HeartbeatRequest,
    MessageType,
    SnapshotRequest,
    StateUpdateRequest,
)
from syncbridge.protocol.session import Snapshot, TokenBucket
from syncbridge.refusals import RefusalLog
from syncbridge.settings import Settings
from syncbridge.store.base import Origin, Store
from syncbridge.store.locks import SessionLocks

__all__ = ["DEFAULT_TOKEN_MAX_LIFETIME", "Peer", "SessionService"]

log = logging.getLogger(__name__)

#: TOKEN_MAX_LIFETIME's default, declared once in settings.py.
DEFAULT_TOKEN_MAX_LIFETIME: Final = Settings().token_max_lifetime


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


class SessionService:
    """The authenticated operations of the v1 protocol."""

    def __init__(
        self,
        *,
        store: Store,
        hub: Hub,
        presence: PresenceStore,
        broker: Broker,
        authority: TokenAuthority,
        token_ttl: float,
        token_max_lifetime: float = DEFAULT_TOKEN_MAX_LIFETIME,
        leave_timeout: float = 1.0,
        max_sockets_per_device: int = 8,
        rate_limit: float = 100.0,
        rate_burst: float = 200.0,
        order_timeout: float = 5.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.hub = hub
        self.presence = presence
        self.broker = broker
        self.authority = authority
        self._token_ttl = token_ttl
        self._token_max_lifetime = token_max_lifetime
        self.refusals = RefusalLog(self.metrics.count_refusal)
        # Refused tokens keep their own counter (syncbridge_auth_failures, by reason).
        self._auth_refusals = RefusalLog(
            lambda reason: self.metrics.auth_failures.labels(reason=reason).inc()
        )
        # DeviceLeft is sent from a closing connection's bounded clean-up, so
        # it may wait for full outboxes only part of that bound.
        self._leave_timeout = leave_timeout
        self._max_sockets_per_device = max_sockets_per_device
        # How long a writer's ack may wait for its turn in the relayed stream (Redis).
        self._order_timeout = order_timeout
        # The message rate follows the device across its sockets.
        self.device_buckets = DeviceBuckets(rate_limit, rate_burst)
        self.clock = clock
        self._last_time = 0
        self.locks = SessionLocks()
        self.observer = Observer(clock=clock)  # what the operator console shows
        # Authenticated connections of this process, for close orders (kick,
        # session delete, revocation) that arrive from any process.
        self.peers = PeerRegistry()
        broker.on_control(self.peers.handle)

    def now(self) -> int:
        """Server time in Unix seconds, never going backwards (v1: server_time)."""
        self._last_time = max(self._last_time, int(self.clock()))
        return self._last_time

    async def handle(self, peer: Peer, envelope: Envelope) -> None:
        """Carry out one request from ``peer``."""
        request = envelope.request
        cid = envelope.correlation_id
        if envelope.type in PROTECTED_TYPES and peer.claims is None:
            raise NotAuthenticated("Not authenticated", correlation_id=cid)
        try:
            match request:
                case HeartbeatRequest():
                    await self._reply(
                        peer,
                        MessageType.HEARTBEAT_ACK,
                        {"server_time": self.now(), "client_time": request.client_time},
                        cid,
                    )
                case AuthRequest():
                    await self._authenticate(peer, request, cid)
                case SnapshotRequest():
                    await self._snapshot(peer, request, cid)
                case StateUpdateRequest():
                    await self._update(peer, request, cid)
                case _:
                    await self._device_list(peer, cid)
        except RequestError as exc:
            # Errors raised below the service (size and device limits, store
            # outages) do not know the request; the reply must still echo its id.
            if exc.correlation_id is None:
                exc.correlation_id = cid
            raise

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
            "snapshot": _snapshot_payload(snap),
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

    def _owned(self, peer: Peer) -> Claims:
        claims = peer.claims
        if claims is None:  # guarded in handle(); kept for the type checker
            raise NotAuthenticated("Not authenticated")
        return claims

    async def _snapshot(self, peer: Peer, request: SnapshotRequest, cid: Any) -> None:
        claims = self._owned(peer)
        if request.session_id is not None and request.session_id != claims.session_id:
            raise PermissionDenied(
                "a token grants its own session only",
                details={"session_id": request.session_id},
                correlation_id=cid,
            )
        with self.metrics.store_operation("snapshot"):
            snap = await self.store.snapshot(claims.session_id)
        await self._reply(peer, MessageType.SNAPSHOT_RESPONSE, _snapshot_payload(snap), cid)

    async def _update(self, peer: Peer, request: StateUpdateRequest, cid: Any) -> None:
        claims = self._owned(peer)
        started = time.perf_counter()
        # On Redis the ack takes its place among the relayed changes (the relay
        # puts it there); in one process the session lock orders everything.
        ticket = self.broker.reply_in_order(claims.session_id, peer.key)
        try:
            async with self.locks.hold(claims.session_id):
                with self.metrics.store_operation("apply"):
                    change = await self.store.apply(
                        claims.session_id,
                        request.key,
                        request.value,
                        request.operation,
                        Origin(claims.user_id, claims.device_id, peer.key),
                        base_version=request.base_version,
                    )
                self.metrics.update_store_seconds.observe(time.perf_counter() - started)
                self.observer.updated(
                    claims.session_id, claims.device_id, change.version, change.key
                )
                # Encoded once for the ack and the broadcast: a value can be
                # hundreds of kilobytes.
                payload = orjson.Fragment(
                    orjson.dumps(
                        {
                            "key": change.key,
                            "value": change.value,
                            "operation": change.operation.value,
                            "version": change.version,
                        }
                    )
                )
                log.debug(
                    "update %s v%d key=%r by %s",
                    claims.session_id,
                    change.version,
                    change.key,
                    claims.device_id,
                )
                ack = self._broadcast_frame(claims, MessageType.STATE_UPDATE, payload, cid)
                if ticket is None:
                    await self.hub.send(peer.outbox, ack)
                    if not self.store.publishes:
                        await self.broker.publish(
                            claims.session_id,
                            self._broadcast_frame(claims, MessageType.STATE_UPDATE, payload),
                            origin=peer.key,
                        )
        except BaseException:
            if ticket is not None:
                ticket.abandon()
            raise
        if ticket is not None and not await ticket.send(
            change.version, ack, peer.outbox, timeout=self._order_timeout
        ):
            # The relay never reached this version (pub/sub lost or far behind):
            # the device can no longer tell what it has seen; it resyncs.
            peer.close(
                CloseCode.SLOW_CONSUMER,
                "behind (slow consumer or missed events): resync by version",
            )
        self.metrics.update_seconds.observe(time.perf_counter() - started)

    async def _device_list(self, peer: Peer, cid: Any) -> None:
        claims = self._owned(peer)
        with self.metrics.store_operation("presence_devices"):
            devices = await self.presence.devices(claims.session_id)
        await self._reply(
            peer, MessageType.DEVICE_LIST, {"devices": devices, "count": len(devices)}, cid
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

    async def close_everywhere(self, order: CloseOrder) -> None:
        """Have every process close its sockets that match ``order``."""
        await self.broker.publish_control(order.encode())

    async def deliver_everywhere(self, delivery: Delivery) -> None:
        """Send a frame to one device's sockets, on whichever processes they are."""
        await self.broker.publish_control(delivery.encode())

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


def _snapshot_payload(snap: Snapshot) -> dict[str, Any]:
    return {
        "session_id": snap.session_id,
        "state_data": snap.state_json(),
        "created_at": snap.created_at,
        "updated_at": snap.updated_at,
        "version": snap.version,
    }
