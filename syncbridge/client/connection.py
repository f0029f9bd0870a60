"""A trio client for SyncBridge (and any HarmonyFlow v1 server), on trio-websocket.

::

    async with open_client("ws://localhost:8080/ws", token=token) as client:
        snap = await client.snapshot()
        version = await client.update("theme", "dark")
        async for message in client:          # pushes from the other devices
            print(message["type"], message["payload"])

Requests carry a ``correlation_id`` and wait for the reply that echoes it;
everything else the server sends (broadcasts, presence, errors without an id)
is kept in arrival order for :meth:`Client.wait_for` and async iteration. The
backlog is bounded: when it is full, reading from the socket pauses, and the
server's slow-consumer rule applies, exactly as for any other device.
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)
from wsproto.utilities import LocalProtocolError

from syncbridge.client.errors import (
    AuthFailed,
    ConnectFailed,
    Disconnected,
    ServerError,
    disconnected_by,
)
from syncbridge.protocol.messages import MessageType

__all__ = ["Client", "open_client"]

_HEARTBEAT_PREFIX = "hb:"


class Client:
    """One connection to the server. Use :func:`open_client` to make one."""

    def __init__(self, ws: WebSocketConnection, *, max_pending: int = 10_000) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._max_pending = max_pending
        self._arrived = trio.Event()
        self._room = trio.Event()
        self.closed: Disconnected | None = None
        self.token: str | None = None

    # -- plumbing -------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Route every incoming message: replies to their waiter, the rest to the backlog."""
        try:
            while True:
                text = await self._ws.get_message()
                message = orjson.loads(text)
                cid = message.get("correlation_id")
                if isinstance(cid, str) and cid.startswith(_HEARTBEAT_PREFIX):
                    continue
                waiter = self._waiting.pop(cid, None) if cid is not None else None
                if waiter is not None:
                    waiter.send_nowait(message)
                    continue
                while len(self._pending) >= self._max_pending:
                    self._room = trio.Event()
                    await self._room.wait()
                self._pending.append(message)
                self._wake()
        except ConnectionClosed as exc:
            self.closed = disconnected_by(exc)
        finally:
            if self.closed is None:
                self.closed = Disconnected(None, "client closed")
            for waiter in self._waiting.values():
                waiter.close()
            self._waiting.clear()
            self._wake()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    async def _heartbeat_loop(self, interval: float) -> None:
        for n in itertools.count():
            await trio.sleep(interval)
            try:
                await self.send(
                    {"type": MessageType.HEARTBEAT, "payload": {}, "correlation_id": f"hb:{n}"}
                )
            except Disconnected:
                # Closed: the reader has recorded why; the application learns it there.
                return

    # -- sending --------------------------------------------------------------

    async def send_raw(self, text: str | bytes) -> None:
        """Send one frame exactly as given (for tests of malformed input)."""
        try:
            await self._ws.send_message(text)
        except ConnectionClosed as exc:
            raise disconnected_by(exc) from None

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message; ``timestamp`` is filled in when missing."""
        message.setdefault("timestamp", int(time.time()))
        await self.send_raw(orjson.dumps(message).decode())

    async def request(
        self, msg_type: int, payload: dict[str, Any] | None = None, *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a request and return the reply that echoes its correlation id.

        Raises :class:`ServerError` when the reply is an Error, and
        :class:`Disconnected` if the connection closes first.
        """
        cid = f"c{next(self._ids)}"
        send_channel, receive_channel = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[cid] = send_channel
        try:
            await self.send(
                {"type": int(msg_type), "payload": payload or {}, "correlation_id": cid}
            )
            with trio.fail_after(timeout):
                try:
                    reply = await receive_channel.receive()
                except trio.EndOfChannel:
                    raise self.closed or Disconnected(None, None) from None
        finally:
            self._waiting.pop(cid, None)
        if reply.get("type") == MessageType.ERROR:
            raise ServerError(reply)
        if reply.get("type") == MessageType.AUTH_FAILURE:
            raise AuthFailed(reply)
        return reply

    # -- the v1 operations ----------------------------------------------------

    async def authenticate(
        self, token: str, *, device_type: str | None = None, device_name: str | None = None
    ) -> dict[str, Any]:
        """Authenticate (or refresh); return the AuthSuccess payload and keep ``new_token``.

        Operator tokens, and device tokens past TOKEN_MAX_LIFETIME, get no
        ``new_token``: the presented token is kept and must be replaced before
        ``expires_at``.
        """
        payload: dict[str, Any] = {"token": token}
        if device_type is not None:
            payload["device_type"] = device_type
        if device_name is not None:
            payload["device_name"] = device_name
        reply = await self.request(MessageType.AUTH, payload)
        self.token = reply["payload"].get("new_token", token)
        return dict(reply["payload"])

    async def heartbeat(self, client_time: Any = None) -> dict[str, Any]:
        """Send a Heartbeat and return the HeartbeatAck payload."""
        reply = await self.request(MessageType.HEARTBEAT, {"client_time": client_time})
        return dict(reply["payload"])

    async def snapshot(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """The session's state: ``{session_id, state_data, created_at, version, ...}``."""
        reply = await self.request(MessageType.SNAPSHOT_REQUEST, {}, timeout=timeout)
        return dict(reply["payload"])

    async def update(self, key: str, value: Any) -> int:
        """Set ``key`` to ``value``; return the session's new version."""
        reply = await self.request(MessageType.STATE_UPDATE, {"key": key, "value": value})
        return int(reply["payload"]["version"])

    async def delete(self, key: str) -> int:
        """Delete ``key``; return the session's new version."""
        reply = await self.request(MessageType.STATE_UPDATE, {"key": key, "operation": "DELETE"})
        return int(reply["payload"]["version"])

    async def devices(self) -> dict[str, Any]:
        """The DeviceList payload: ``{devices: [...], count}``."""
        reply = await self.request(MessageType.DEVICE_LIST, {})
        return dict(reply["payload"])

    # -- receiving pushes -----------------------------------------------------

    async def wait_for(self, msg_type: int, *, timeout: float = 10.0) -> dict[str, Any]:
        """Take the first unclaimed message of ``msg_type``, waiting up to ``timeout``.

        Messages of other types stay in the backlog, in order.
        """
        with trio.fail_after(timeout):
            while True:
                for i, message in enumerate(self._pending):
                    if message.get("type") == msg_type:
                        del self._pending[i]
                        self._room.set()
                        return message
                if self.closed is not None:
                    raise self.closed
                await self._arrived.wait()

    async def next_message(self, *, timeout: float = math.inf) -> dict[str, Any]:
        """The next unclaimed message of any type."""
        with trio.fail_after(timeout):
            while not self._pending:
                if self.closed is not None:
                    raise self.closed
                await self._arrived.wait()
        self._room.set()
        return self._pending.popleft()

    def pending(self) -> list[dict[str, Any]]:
        """Unclaimed messages received so far (a copy)."""
        return list(self._pending)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                yield await self.next_message()
            except Disconnected:
                return

    async def wait_closed(self, *, timeout: float = 10.0) -> Disconnected:
        """Wait until the server closes the connection; return the close code and reason."""
        with trio.fail_after(timeout):
            while self.closed is None:
                await self._arrived.wait()
        return self.closed

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection (idempotent)."""
        await self._ws.aclose(code, reason)


def _check_url(url: str) -> None:
    if not url.startswith(("ws://", "wss://")):
        scheme = url.partition("://")[0] if "://" in url else url
        hint = " (the WebSocket endpoint is ws://HOST:PORT/ws)" if scheme.startswith("http") else ""
        raise ValueError(f"a WebSocket URL starts with ws:// or wss://, got {url!r}{hint}")


async def _connect(
    nursery: trio.Nursery, url: str, *, max_message_bytes: int, connect_timeout: float
) -> WebSocketConnection:
    """Open the WebSocket, translating every way it can fail into ConnectFailed."""
    try:
        with trio.fail_after(connect_timeout):
            return await connect_websocket_url(nursery, url, max_message_size=max_message_bytes)
    except trio.TooSlowError as exc:
        raise ConnectFailed(url, f"no answer within {connect_timeout:g}s") from exc
    except OSError as exc:
        raise ConnectFailed(url, _os_reason(exc)) from exc


def _os_reason(exc: OSError) -> str:
    """Why a connection failed: trio's "all attempts failed" keeps the errors in its cause."""
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return exc.strerror or str(exc) or type(exc).__name__


@asynccontextmanager
async def open_client(
    url: str,
    *,
    token: str | None = None,
    device_type: str | None = None,
    device_name: str | None = None,
    heartbeat_interval: float | None = 30.0,
    max_message_bytes: int = 16 * 1024 * 1024,
    connect_timeout: float = 10.0,
    max_pending: int = 10_000,
) -> AsyncIterator[Client]:
    """Connect (and authenticate when ``token`` is given); close on exit.

    Raises exactly the documented exceptions, never an exception group:
    :class:`ConnectFailed` when no connection can be made, :class:`AuthFailed`
    for a refused token, :class:`Disconnected` if the server closes first, and
    ``ValueError`` for a URL that is not ``ws://`` or ``wss://``. Exceptions
    raised inside the ``async with`` block come out unchanged.

    A Heartbeat goes out every ``heartbeat_interval`` seconds (None: never), as
    the server expects a sign of life at least every 60 s. At most
    ``max_pending`` unclaimed messages are kept; then reading pauses.
    """
    _check_url(url)
    closing = False
    # The nursery would wrap whatever leaves its body in an ExceptionGroup; the
    # body's own exception is carried out of it and raised as it is instead.
    # (Cancelled is left alone: it belongs to trio's cancel scopes.)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                ws = await _connect(
                    nursery,
                    url,
                    max_message_bytes=max_message_bytes,
                    connect_timeout=connect_timeout,
                )
                client = Client(ws, max_pending=max_pending)
                nursery.start_soon(client._read_loop)
                if heartbeat_interval is not None:
                    nursery.start_soon(client._heartbeat_loop, heartbeat_interval)
                try:
                    if token is not None:
                        await client.authenticate(
                            token, device_type=device_type, device_name=device_name
                        )
                    yield client
                finally:
                    closing = True
                    with trio.move_on_after(2, shield=True):
                        await ws.aclose()
            except Exception as exc:
                failure = exc
            finally:
                closing = True
                nursery.cancel_scope.cancel()
    except* HandshakeError as group:
        # trio-websocket's reader task (not connect) raises a refused upgrade.
        rejected = _first_leaf(group)
        status = getattr(rejected, "status_code", None)
        reason = f"the server refused the upgrade with HTTP {status}" if status else "handshake"
        failure = ConnectFailed(url, reason, status_code=status)
        failure.__cause__ = rejected
    except* LocalProtocolError:
        # trio-websocket's reader can trip over a server ping that arrives while
        # the close handshake is under way (trio-websocket issue #184); once we
        # are closing anyway, that is not an error of the caller's.
        if not closing:
            raise
    if failure is not None:
        raise failure


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first exception in ``group`` that is not itself a group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
