"""Session operations over a Store, a Hub and Presence; knows nothing of WebSockets.

A connection hands every decoded request to :meth:`SessionService.handle`,
which checks authentication, applies it and queues the replies and broadcasts
as encoded frames. Request errors propagate as :class:`RequestError` for the
connection to answer; nothing is changed when one is raised.

This module holds the operations on state (snapshot, update, device list) and
the service's wiring; joining and leaving (Auth, Resume, disconnect) are its
base class, :class:`syncbridge.membership.Membership`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from syncbridge.auth import Claims, TokenAuthority
from syncbridge.broker import Broker
from syncbridge.control import CloseOrder, Delivery, PeerRegistry
from syncbridge.errors import (
    CloseCode,
    NotAuthenticated,
    PermissionDenied,
    RequestError,
)
from syncbridge.hub import Hub
from syncbridge.limits import DeviceBuckets
from syncbridge.membership import Membership, Peer, snapshot_payload
from syncbridge.metrics import Metrics
from syncbridge.observe import Observer
from syncbridge.presence import PresenceStore
from syncbridge.protocol.messages import (
    PROTECTED_TYPES,
    AuthRequest,
    Envelope,
    HeartbeatRequest,
    MessageType,
    SnapshotRequest,
    StateUpdateRequest,
)
from syncbridge.refusals import RefusalLog
from syncbridge.settings import Settings
from syncbridge.store.base import Origin, Store
from syncbridge.store.locks import SessionLocks

__all__ = ["DEFAULT_TOKEN_MAX_LIFETIME", "Peer", "SessionService"]

log = logging.getLogger(__name__)

#: TOKEN_MAX_LIFETIME's default, declared once in settings.py.
DEFAULT_TOKEN_MAX_LIFETIME: Final = Settings().token_max_lifetime


class SessionService(Membership):
    """The authenticated operations of the v1 protocol (membership: see the base)."""

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
        await self._reply(peer, MessageType.SNAPSHOT_RESPONSE, snapshot_payload(snap), cid)

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

    async def close_everywhere(self, order: CloseOrder) -> None:
        """Have every process close its sockets that match ``order``."""
        await self.broker.publish_control(order.encode())

    async def deliver_everywhere(self, delivery: Delivery) -> None:
        """Send a frame to one device's sockets, on whichever processes they are."""
        await self.broker.publish_control(delivery.encode())
