"""One WebSocket connection: a nursery of a reader and a writer task.

::

    Connection.run ── nursery
        ├─ _read_loop   ASGI receive (under the nearest deadline: liveness, auth,
        │               token expiry → close code) → rate limit → decode → handle;
        │               on exit: leave the session (unsubscribe, presence, DeviceLeft)
        └─ _write_loop  outbox (bounded channel) → ASGI send; the only sender of frames

When either task ends, the nursery's cancel scope ends the other. The reader
leaves the session in its ``finally`` as soon as it is cancelled, under a
shielded, bounded scope: hypercorn shields its socket writes, so a writer stuck
on a device that stopped reading cannot be cancelled, and the session must not
wait for it. The close frame is sent in ``run``'s ``finally`` once both ended.

Deadlines live in the reader rather than in a watchdog task of their own: an
idle connection then costs two tasks, and only the reader ever moves a deadline
(an Auth is handled by the reader itself).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from syncbridge.auth import Claims
from syncbridge.errors import CloseCode, RateLimited, RequestError
from syncbridge.hub import Outbox
from syncbridge.protocol.codec import decode, encode, error_payload
from syncbridge.protocol.messages import MessageType
from syncbridge.protocol.session import TokenBucket
from syncbridge.service import SessionService
from syncbridge.settings import Settings

__all__ = ["Connection"]

log = logging.getLogger(__name__)

ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

_MAX_REASON_BYTES = 123  # RFC 6455 §5.5: control frame payload <= 125, 2 for the code


class Connection:
    """An accepted WebSocket and everything it owns."""

    def __init__(
        self,
        *,
        key: int,
        service: SessionService,
        settings: Settings,
        receive: ASGIReceive,
        send: ASGISend,
        client: str,
    ) -> None:
        self.key = key
        self.claims: Claims | None = None
        self.device_type: str | None = None
        self.device_name: str | None = None
        self.client = client
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.peer_close_code: int | None = None
        self._service = service
        self._metrics = service.metrics
        self._settings = settings
        self._receive = receive
        self._send = send
        self._bucket = TokenBucket(settings.rate_limit, settings.rate_burst)
        self._refused_in_a_row = 0
        self._opened_at = trio.current_time()
        self.last_seen = self._opened_at
        self._authorized_until: float | None = None  # Unix seconds
        self._scope = trio.CancelScope()
        self._left = False
        send_channel, self._outbox_receive = trio.open_memory_channel[str](settings.outbox_size)
        self.outbox = Outbox(
            send_channel,
            # The hub also uses this close when events may have been missed
            # (Redis pub/sub reconnect, feed overflow): either way, resync.
            on_slow=lambda: self.close(
                CloseCode.SLOW_CONSUMER,
                "behind (slow consumer or missed events): resync by version",
            ),
            label=f"connection {key}",
        )
        self._outbox_send = send_channel

    def authorize_until(self, expires_at: int) -> None:
        """Set when the identity expires (each successful Auth moves it)."""
        self._authorized_until = expires_at

    def close(self, code: CloseCode, reason: str) -> None:
        """End the connection with ``code``; the first close code given wins."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._scope.cancel()

    async def run(self) -> None:
        """Serve the socket until either side closes it."""
        log.info("connection %d open from %s", self.key, self.client)
        self._metrics.connections_opened.inc()
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    # Named so that /debug/tasks counts each kind of task.
                    nursery.start_soon(self._until_done, self._read_loop, name="connection.read")
                    nursery.start_soon(self._until_done, self._write_loop, name="connection.write")
        finally:
            with trio.move_on_after(self._settings.cleanup_timeout, shield=True):
                await self._clean_up()

    async def _until_done(self, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        except Exception:
            log.exception("connection %d: internal error", self.key)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._scope.cancel()

    async def _leave_session(self) -> None:
        # Runs when the reader ends and again from _clean_up. Closing the outbox makes
        # publishers skip this connection instead of waiting for it again;
        # disconnect() (which also unwatches the session) must run only once.
        self._outbox_send.close()
        if self.claims is not None and not self._left:
            self._left = True
            await self._service.disconnect(self)

    async def _clean_up(self) -> None:
        try:
            await self._leave_session()
        finally:
            if self.peer_close_code is None:
                reason = self.close_reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
                await self._send(
                    {
                        "type": "websocket.close",
                        "code": int(self.close_code or CloseCode.NORMAL),
                        "reason": reason,
                    }
                )
            claims = self.claims
            by = (
                "client"
                if self.peer_close_code is not None and self.close_code is None
                else "server"
            )
            code = int(self.close_code) if self.close_code else self.peer_close_code
            self._metrics.connections_closed.labels(code=str(code), by=by).inc()
            log.info(
                "connection %d closed: code=%s reason=%r by=%s session=%s device=%s",
                self.key,
                code,
                self.close_reason,
                by,
                claims.session_id if claims else "-",
                claims.device_id if claims else "-",
            )

    async def _read_loop(self) -> None:
        try:
            await self._read_until_closed()
        finally:
            with trio.move_on_after(self._settings.cleanup_timeout, shield=True):
                await self._leave_session()

    async def _read_until_closed(self) -> None:
        max_bytes = self._settings.max_message_bytes
        while True:
            deadline, code, reason = self._next_deadline()
            with trio.move_on_at(deadline) as timer:
                event = await self._receive()
            if timer.cancelled_caught:
                self.close(code, reason)
                return
            kind = event["type"]
            if kind == "websocket.disconnect":
                self.peer_close_code = int(event.get("code", 1005))
                return
            if kind != "websocket.receive":
                continue
            self.last_seen = trio.current_time()
            text = event.get("text")
            data: str | bytes = text if text is not None else (event.get("bytes") or b"")
            # hypercorn bounds messages in characters; the limit is in bytes.
            if (
                len(data) * 4 > max_bytes
                and len(data.encode() if isinstance(data, str) else data) > max_bytes
            ):
                self.close(CloseCode.MESSAGE_TOO_BIG, f"message over {max_bytes} bytes")
                return
            await self._on_frame(data)

    async def _on_frame(self, data: str | bytes) -> None:
        if not self._bucket.allow(trio.current_time()):
            self._refused_in_a_row += 1
            if self._refused_in_a_row >= self._settings.rate_burst:
                self.close(CloseCode.FLOODING, "message rate limit exceeded persistently")
                return
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
        self._refused_in_a_row = 0
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
        async with self._outbox_receive:
            count_sent = self._metrics.count_sent
            async for frame in self._outbox_receive:
                await self._send({"type": "websocket.send", "text": frame})
                count_sent(frame)

    def _next_deadline(self) -> tuple[float, CloseCode, str]:
        """The earliest deadline of liveness, authentication and token expiry."""
        settings = self._settings
        deadline = (
            self.last_seen + settings.liveness_timeout,
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
