"""One connection's life in a synchronised client: resume, then pump, send and refresh.

A :class:`Link` works on the client's :class:`SyncCore` (mirror, outbox, event
buffer, tokens), which outlives every connection. ``resume`` authenticates with
``last_version`` and applies the Resume; ``serve`` then runs, until the
connection ends::

    serve ── _pump (the only reader), _send_loop, _refresh_loop

Every message is handled by ``_pump`` in arrival order, acks included (updates
are sent with correlation ids the low-level client does not wait for), because
the server orders acks and broadcasts by version on each socket and the mirror
relies on that order (decision 0013).
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import trio

from syncbridge.client.connection import Client
from syncbridge.client.errors import AuthFailed, ConflictError, Disconnected, ServerError
from syncbridge.client.mirror import Mirror, TokenRefreshed, change_from
from syncbridge.client.outbox import Outbox
from syncbridge.client.sync_events import EventBuffer
from syncbridge.client.tokens import TokenKeeper
from syncbridge.protocol.messages import MessageType

__all__ = ["Ended", "Link", "SyncCore"]


@attrs.frozen
class Ended:
    """How one connection ended (for the log, ConnectionLost and the next attempt)."""

    code: int | None
    reason: str | None


@attrs.define(kw_only=True)
class SyncCore:
    """What a synchronised client keeps across connections."""

    mirror: Mirror
    outbox: Outbox
    events: EventBuffer
    tokens: TokenKeeper
    device: dict[str, str | None]
    request_timeout: float
    send_base_version: bool
    refresh_tokens: bool
    ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    outbox_changed: trio.Event = attrs.Factory(trio.Event)
    identity: dict[str, Any] = attrs.Factory(dict)
    refreshes: int = 0

    def pulse_outbox(self) -> None:
        """Wake the sender: an update was queued, or the in-flight window has room."""
        self.outbox_changed.set()
        self.outbox_changed = trio.Event()

    def on_auth(self, reply: dict[str, Any]) -> None:
        """Take identity and token from an AuthSuccess message."""
        payload = reply.get("payload") or {}
        self.identity = {k: payload.get(k) for k in ("user_id", "device_id", "session_id")}
        self.tokens.accepted(reply)


@attrs.define
class Link:
    """One open connection of a synchronised client."""

    core: SyncCore
    connection: Client

    async def serve(self) -> Ended:
        """Pump, send and refresh until the connection ends; say how it ended."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_loop)
            if self.core.refresh_tokens:
                nursery.start_soon(self._refresh_loop)
            ended = await self._pump()
            nursery.cancel_scope.cancel()
        return ended

    async def resume(self) -> None:
        """Authenticate with ``last_version``, apply the Resume, reconcile the outbox."""
        payload: dict[str, Any] = {
            "token": await self.core.tokens.current(),
            "last_version": self.core.mirror.version,
            **{k: v for k, v in self.core.device.items() if v is not None},
        }
        reply = await self.connection.request(
            MessageType.AUTH, payload, timeout=self.core.request_timeout
        )
        self.core.on_auth(reply)
        # A v1 server ignores last_version and sends no Resume. It answers a socket's
        # messages in order, and the Resume is part of answering the Auth, so a
        # Heartbeat acknowledged first means no Resume is coming: take a snapshot.
        probe = f"probe:{next(self.core.ids)}"
        await self.connection.send(
            {"type": MessageType.HEARTBEAT, "payload": {}, "correlation_id": probe}
        )
        resume: dict[str, Any] | None = None
        with trio.fail_after(self.core.request_timeout):
            while resume is None:
                message = await self.connection.next_message()
                kind = message.get("type")
                if kind == MessageType.RESUME:
                    resume = message.get("payload") or {}
                elif kind == MessageType.HEARTBEAT_ACK and message.get("correlation_id") == probe:
                    snapshot = await self.connection.snapshot(timeout=self.core.request_timeout)
                    resume = {"mode": "snapshot", "snapshot": snapshot}
                elif kind == MessageType.STATE_UPDATE:
                    # A broadcast ahead of the Resume: applied if it follows on, else
                    # held; the Resume covers it either way.
                    events, _gap = self.core.mirror.apply(change_from(message, local=False))
                    await self.core.events.emit(events)
        events, replayed, gap = self.core.mirror.apply_resume(resume)
        await self.core.events.emit(events)
        if gap:
            await self._resync(reason="gap")
        device = self.core.identity.get("device_id")
        await self.core.events.emit(
            list(self.core.outbox.reconcile(self.core.mirror, replayed, device))
        )

    async def _resync_or_end(self) -> Ended | None:
        """Resync after a gap; how the connection ended if that failed."""
        try:
            await self._resync(reason="gap")
        except Disconnected as exc:
            return Ended(exc.code, exc.reason)
        except (ServerError, trio.TooSlowError) as exc:
            await self.connection.aclose()
            return Ended(None, f"resync failed: {exc!r}")
        return None

    async def _resync(self, *, reason: str) -> None:
        snapshot = await self.connection.snapshot(timeout=self.core.request_timeout)
        await self.core.events.emit(self.core.mirror.apply_snapshot(snapshot, reason=reason))

    async def _pump(self) -> Ended:
        """Handle every message in arrival order until the connection ends."""
        while True:
            try:
                message = await self.connection.next_message()
            except Disconnected as exc:
                return Ended(exc.code, exc.reason)
            kind = message.get("type")
            cid = message.get("correlation_id")
            if kind == MessageType.STATE_UPDATE:
                update = self.core.outbox.settle(cid) if isinstance(cid, str) else None
                events, gap = self.core.mirror.apply(change_from(message, local=update is not None))
                if update is not None:
                    update.resolve(int(message["payload"]["version"]))
                    self.core.pulse_outbox()
                await self.core.events.emit(events)
                if gap and (failed := await self._resync_or_end()) is not None:
                    return failed
            elif (
                kind == MessageType.ERROR
                and isinstance(cid, str)
                and cid in self.core.outbox.in_flight
            ):
                error = ServerError(message)
                if error.code == 503:
                    # The store may or may not have applied it: reconnect, and let
                    # the Resume tell (Outbox.reconcile).
                    await self.connection.aclose()
                    return Ended(None, f"store unavailable: {error.message}")
                update = self.core.outbox.settle(cid)
                assert update is not None
                update.fail(self._conflict(update.key, error) or error)
                self.core.pulse_outbox()

    def _conflict(self, key: str, error: ServerError) -> ConflictError | None:
        """A refusal for a stale ``base_version``, once the server checks it (409 CONFLICT,
        with the key's current ``value`` and ``version`` in ``details`` when given)."""
        if error.code != 409 and error.error_code != "CONFLICT":
            return None
        details = error.details or {}
        version = details.get("version", self.core.mirror.version)
        return ConflictError(key, details.get("value"), int(version))

    async def _send_loop(self) -> None:
        while True:
            update = self.core.outbox.next_to_send()
            if update is None:
                await self.core.outbox_changed.wait()
                continue
            cid = f"u{next(self.core.ids)}"
            payload: dict[str, Any] = {"key": update.key}
            if update.operation == "DELETE":
                payload["operation"] = "DELETE"
            else:
                payload["value"] = update.value
            if self.core.send_base_version:
                payload["base_version"] = update.base_version
            self.core.outbox.mark_sent(update, cid)
            try:
                await self.connection.send(
                    {"type": MessageType.STATE_UPDATE, "payload": payload, "correlation_id": cid}
                )
            except Disconnected:
                return  # the pump sees the close and ends the connection

    async def _refresh_loop(self) -> None:
        """Send Auth with the latest token before it expires, so the socket is never closed 4401."""
        while (delay := self.core.tokens.refresh_in()) is not None:
            await trio.sleep(delay)
            try:
                # The latest new_token is still valid for a while: present it; the
                # provider is only asked when it no longer is.
                token = await self.core.tokens.current(margin=1.0)
                reply = await self.connection.request(
                    MessageType.AUTH, {"token": token}, timeout=self.core.request_timeout
                )
            except AuthFailed:
                if not self.core.tokens.refused():
                    return  # the socket closes 4401 at expiry; reconnecting needs a token
                continue
            except (Disconnected, ServerError, trio.TooSlowError):
                return
            self.core.tokens.accepted(reply)
            self.core.refreshes += 1
            assert self.core.tokens.token is not None
            await self.core.events.emit(
                [TokenRefreshed(token=self.core.tokens.token, expires_in=self.core.tokens.lifetime)]
            )
