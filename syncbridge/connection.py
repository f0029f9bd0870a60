"""One WebSocket connection: a nursery of a reader, a writer and a heartbeat task.

::

    Connection.run ── nursery
        ├─ _read_loop    transport.receive → rate limit → decode → handle;
        │                on exit: leave the session (unsubscribe, presence, DeviceLeft)
        ├─ _write_loop   writes what the socket did not take at once (the only task
        │                that waits on the socket for writing; see syncbridge.outbox)
        └─ _heartbeat    a ping every PING_INTERVAL, first one interval after accept;
                         owns the deadlines: liveness (4001; any frame, pongs included,
                         is a sign of life), authentication (4408), token expiry (4401)

When any task ends, the connection's cancel scope ends the others. The closing
handshake (close frame, flush, wait for the peer's close) and the close log line
run in ``run``'s ``finally`` under a shielded scope bounded by CLEANUP_TIMEOUT;
the socket is released at once after it.
"""

from __future__ import annotations

import logging
from types import TracebackType

import trio

from syncbridge.auth import Claims
from syncbridge.errors import CloseCode, RateLimited, RequestError
from syncbridge.hub import Outbox
from syncbridge.outbox import SocketOutbox
from syncbridge.protocol.codec import decode, encode, error_payload
from syncbridge.protocol.messages import MessageType
from syncbridge.protocol.session import TokenBucket
from syncbridge.service import SessionService
from syncbridge.settings import Settings
from syncbridge.transport import Transport

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_MAX_REASON_BYTES = 123  # RFC 6455 §5.5: control frame payload <= 125, 2 for the code
# RFC 6455 §7.4.1: 1006 means "closed without a close frame" (never sent on the wire).
_ABNORMAL = 1006


class Connection:
    """An accepted WebSocket and everything it owns."""

    # Slots: one of these lives as long as each idle socket (no per-instance dict).
    __slots__ = (
        "_authorized_until",
        "_bucket",
        "_left",
        "_metrics",
        "_opened_at",
        "_refusals",
        "_scope",
        "_service",
        "_settings",
        "_timer",
        "_transport",
        "claims",
        "client",
        "close_code",
        "close_reason",
        "device_name",
        "device_type",
        "key",
        "outbox",
        "peer_close_code",
    )

    def __init__(
        self,
        *,
        key: int,
        service: SessionService,
        settings: Settings,
        transport: Transport,
        client: str,
    ) -> None:
        self.key = key
        self.claims: Claims | None = None
        self.device_type: str | None = None
        self.device_name: str | None = None
        self.client = client
        self.close_code: CloseCode | int | None = None
        self.close_reason = ""
        self.peer_close_code: int | None = None
        self._service = service
        self._metrics = service.metrics
        self._settings = settings
        self._transport = transport
        self._bucket = TokenBucket(settings.rate_limit, settings.rate_burst)
        self._refusals: list[float] | None = None  # times of refused messages, when any
        self._opened_at = trio.current_time()
        self._authorized_until: float | None = None  # Unix seconds
        self._scope = trio.CancelScope()
        self._timer: trio.CancelScope | None = None
        self._left = False
        self.outbox: Outbox = SocketOutbox(
            transport,
            max_frames=settings.outbox_size,
            max_bytes=settings.outbox_bytes,
            # The hub also uses this close when events may have been missed
            # (Redis pub/sub reconnect, feed overflow): either way, resync.
            on_slow=self._close_slow,
            on_sent=self._metrics.count_sent,
            label=f"connection {key}",
        )

    def _close_slow(self) -> None:
        self.close(
            CloseCode.SLOW_CONSUMER, "behind (slow consumer or missed events): resync by version"
        )

    @property
    def last_seen(self) -> float:
        """trio time of the last frame received (or of the accept)."""
        return self._transport.last_activity

    def authorize_until(self, expires_at: int) -> None:
        """Set when the identity expires (each successful Auth moves it)."""
        self._authorized_until = expires_at
        if self._timer is not None:  # let the heartbeat take the new deadline
            self._timer.cancel()

    def share_rate_limit(self, bucket: TokenBucket) -> None:
        """Count this socket's messages against the device's shared bucket."""
        self._bucket = bucket

    def close(self, code: CloseCode, reason: str) -> None:
        """End the connection with ``code``; the first close code given wins."""
        if self.close_code is None and self.peer_close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._scope.cancel()

    def abort(self) -> None:
        """Release the socket now, whatever the connection is doing (shutdown past its
        deadline); its tasks and clean-up end at once."""
        self.close(CloseCode.GOING_AWAY, "server stopped")
        self._transport.release()

    async def run(self) -> None:
        """Serve the socket until either side closes it."""
        log.info("connection %d open from %s", self.key, self.client)
        self._metrics.connections_opened.inc()
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    # Named so that /debug/tasks counts each kind of task.
                    nursery.start_soon(self._read_loop, name="connection.read")
                    nursery.start_soon(self._write_loop, name="connection.write")
                    nursery.start_soon(self._heartbeat, name="connection.heartbeat")
        finally:
            with trio.move_on_after(self._settings.cleanup_timeout, shield=True):
                await self._clean_up()
            self._transport.release()

    def __enter__(self) -> None:
        """Each task runs ``with self:`` (see :meth:`__exit__`)."""

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """When a task ends, end the connection; a bug of ours is logged and closes
        1011 without escaping (a context manager rather than a wrapper coroutine:
        no extra frame per task for every idle socket)."""
        self._scope.cancel()
        if isinstance(exc, Exception):
            log.error("connection %d: internal error", self.key, exc_info=exc)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return True
        return False

    async def _leave_session(self) -> None:
        # Runs when the reader ends and again from _clean_up; disconnect() (which
        # also unwatches the session) must run only once.
        if self.claims is not None and not self._left:
            self._left = True
            await self._service.disconnect(self)

    async def _clean_up(self) -> None:
        transport = self._transport
        try:
            await self._leave_session()
        finally:
            if self.close_code is None and self.peer_close_code is None:
                self.close_code = CloseCode.NORMAL
            if self.close_code is not None:
                reason = self.close_reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
                transport.send_close(int(self.close_code), reason)
            self._log_close()
            # Closing handshake: our close frame (or our echo of the peer's) goes
            # out, then the peer's close frame or end of stream comes in, so the
            # peer reads a clean close rather than a reset.
            await transport.wait_flushed()
            await transport.wait_peer_closed()

    def _log_close(self) -> None:
        claims = self.claims
        by = "server" if self.close_code is not None else "client"
        code = self.close_code if self.close_code is not None else self.peer_close_code
        self._metrics.connections_closed.labels(code=str(int(code or _ABNORMAL)), by=by).inc()
        log.info(
            "connection %d closed: code=%s reason=%r by=%s session=%s device=%s",
            self.key,
            int(code or _ABNORMAL),
            self.close_reason,
            by,
            claims.session_id if claims else "-",
            claims.device_id if claims else "-",
        )

    async def _read_loop(self) -> None:
        with self:
            try:
                await self._read_until_closed()
            finally:
                with trio.move_on_after(self._settings.cleanup_timeout, shield=True):
                    await self._leave_session()

    async def _read_until_closed(self) -> None:
        transport = self._transport
        while True:
            message = await transport.receive()
            if message is None:
                self._closed_by_transport()
                return
            await self._on_frame(message)
            del message  # an idle socket keeps nothing of its last message

    def _closed_by_transport(self) -> None:
        """Record who closed: the peer (its code), or the protocol on bad input."""
        transport = self._transport
        if transport.peer_close_code is not None and self.close_code is None:
            self.peer_close_code = transport.peer_close_code
            self.close_reason = transport.peer_close_reason
        elif transport.sent_close_code is not None and self.close_code is None:
            # websockets failed the connection: 1009 oversize, 1002 bad framing,
            # 1007 invalid UTF-8.
            self.close_code = transport.sent_close_code
            self.close_reason = transport.sent_close_reason
        elif self.close_code is None:
            self.peer_close_code = _ABNORMAL  # end of stream without a close frame
        self._scope.cancel()

    async def _on_frame(self, data: str | bytes) -> None:
        now = trio.current_time()
        if not self._bucket.allow(now):
            if self._refused_too_often(now):
                self._service.refusals.refuse(
                    "flooding", "connection %d closed 4429 (%s)", self.key, self.client
                )
                self.close(CloseCode.FLOODING, "message rate limit exceeded persistently")
                return
            self._service.refusals.refuse(
                "rate_limited", "message on connection %d (%s)", self.key, self.client
            )
            cid = None
            try:
                cid = decode(data).correlation_id
            except RequestError as exc:
                cid = exc.correlation_id
            await self._answer(
                RateLimited(
                    f"more than {self._settings.rate_limit:g} messages/s; message dropped",
                    correlation_id=cid,
                )
            )
            return
        try:
            try:
                envelope = decode(data)
            except RequestError:
                self._metrics.received_invalid.inc()
                raise
            self._metrics.received[envelope.type].inc()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("connection %d <- %s", self.key, envelope.type.name)
            self._service.touch(self)
            await self._service.handle(self, envelope)
        except RequestError as exc:
            await self._answer(exc)

    def _refused_too_often(self, now: float) -> bool:
        """True once RATE_BURST messages were refused within the last FLOOD_WINDOW.

        A window rather than "in a row": a flooder whose bucket refills one token
        at a time never makes a long run of refusals, yet is refused almost always.
        """
        refusals = self._refusals
        if refusals is None:
            refusals = self._refusals = []
        refusals.append(now)
        window_start = now - self._settings.flood_window
        while refusals and refusals[0] < window_start:
            refusals.pop(0)
        return len(refusals) >= self._settings.rate_burst

    async def _answer(self, exc: RequestError) -> None:
        log.debug("connection %d: %s %s", self.key, exc.error_code, exc.message)
        self._metrics.errors.labels(code=exc.error_code).inc()
        frame = encode(
            MessageType.ERROR,
            error_payload(exc.status, exc.error_code, exc.message, exc.details),
            timestamp=self._service.now(),
            correlation_id=exc.correlation_id,
        )
        await self._service.hub.send(self.outbox, frame)

    async def _write_loop(self) -> None:
        with self:
            await self._transport.write_queued()
            # The socket broke (reset, or TCP_USER_TIMEOUT on a peer that stopped reading).
            if self.close_code is None and self.peer_close_code is None:
                self.peer_close_code = _ABNORMAL

    async def _heartbeat(self) -> None:
        """Ping every PING_INTERVAL from one interval after accept; enforce deadlines."""
        with self:
            interval = self._settings.ping_interval
            next_ping = self._opened_at + interval
            while True:
                deadline, code, reason = self._next_deadline()
                with trio.CancelScope(deadline=min(deadline, next_ping)) as self._timer:
                    await trio.sleep_forever()
                self._timer = None
                now = trio.current_time()
                deadline, code, reason = self._next_deadline()
                if now >= deadline:
                    self.close(code, reason)
                    return
                if now >= next_ping:
                    self._transport.send_ping()
                    next_ping = now + interval

    def _next_deadline(self) -> tuple[float, CloseCode, str]:
        """The earliest deadline of liveness, authentication and token expiry."""
        settings = self._settings
        deadline = (
            self._transport.last_activity + settings.liveness_timeout,
            CloseCode.LIVENESS_TIMEOUT,
            f"no message for {settings.liveness_timeout:g}s",
        )
        if self._authorized_until is None:
            auth = (
                self._opened_at + settings.auth_timeout,
                CloseCode.AUTH_TIMEOUT,
                f"not authenticated within {settings.auth_timeout:g}s",
            )
        else:
            remaining = self._authorized_until - self._service.clock()
            auth = (
                trio.current_time() + remaining,
                CloseCode.TOKEN_EXPIRED,
                "token expired; refresh with Auth",
            )
        return min(deadline, auth, key=lambda d: d[0])
