"""A fake WebSocket transport on trio memory channels, for connection-level tests.

The test plays the peer: it pushes messages (or a close, or a lost connection) for
the connection to read, and reads what the connection sends. Like the engine's
socket (:class:`syncbridge.ws.socket.WebSocket`), ``send_text`` delivers at once
unless something is queued; :meth:`FakeWebSocket.stall` plays a device that stopped
reading (every frame queues until :meth:`FakeWebSocket.release`), and
:meth:`FakeWebSocket.fail_sends` a socket that breaks on the next write.
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import Any

import attrs
import orjson
import trio
import trio.testing

from syncbridge.app import SyncBridgeApp
from syncbridge.connection import Connection
from syncbridge.protocol.messages import MessageType

from .conftest import make_settings, mint

__all__ = [
    "EPOCH",
    "FakeWebSocket",
    "Link",
    "authenticate",
    "connect",
    "delivered_at",
    "make_app",
    "publish_updates",
    "pushes",
    "session_of",
    "start_connection",
    "still_open_for",
    "token",
]

_keys = itertools.count(1)

EPOCH = 1_700_000_000  # wall-clock seconds at mock time 0


class FakeWebSocket:
    """Both ends of one accepted WebSocket: the :class:`~syncbridge.transport.Transport`
    the connection uses, and the test's (the peer's) side."""

    def __init__(self) -> None:
        self._inbound_send, self._inbound = trio.open_memory_channel[Any](math.inf)
        self._outbound_send, self._outbound = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.last_activity = trio.current_time()
        self.peer_close_code: int | None = None
        self.peer_close_reason = ""
        self.queued_bytes = 0
        #: Every close frame the connection tried to send, delivered or not.
        self.closes_sent: list[dict[str, Any]] = []
        #: Every delivered text message, decoded, with its (trio) delivery time.
        self.received: list[tuple[float, dict[str, Any]]] = []
        #: trio time of every ping the connection sent.
        self.pings: list[float] = []
        #: Whether the fake peer answers pings with pongs (a sign of life); off by
        #: default, so that "silent" means silent.
        self.answers_pings = False
        self.close_event: dict[str, Any] | None = None
        self._closed = trio.Event()
        self._queue: collections.deque[Any] = collections.deque()
        self._stalled = False
        self._changed = trio.Event()
        self._broken = False
        self._closing = False
        self._peer_closed = trio.Event()
        self.released = False

    # -- the Transport side (what the connection calls) -------------------------

    @property
    def open(self) -> bool:
        return not (self._closing or self._broken or self.peer_close_code is not None)

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    @property
    def sent_close_code(self) -> int | None:
        return None if not self.closes_sent else int(self.closes_sent[0]["code"])

    @property
    def sent_close_reason(self) -> str:
        return "" if not self.closes_sent else str(self.closes_sent[0]["reason"])

    def send_text(self, payload: bytes) -> None:
        if self.open:
            self._write(("text", payload))

    def send_ping(self) -> None:
        if self.open:
            self.pings.append(trio.current_time())
            if self.answers_pings:
                self.last_activity = trio.current_time()

    def send_close(self, code: int, reason: str) -> None:
        if self.open:
            self._closing = True
            event = {"type": "websocket.close", "code": code, "reason": reason}
            self.closes_sent.append(event)
            self._write(("close", event))

    def _write(self, item: Any) -> None:
        if self._broken:
            return
        if self._failure is not None:
            self._break()
            return
        if self._stalled or self._queue:
            self._queue.append(item)
            self.queued_bytes += len(item[1]) if item[0] == "text" else 2
            self._wake()
        else:
            self._deliver(item)

    def _deliver(self, item: Any) -> None:
        kind, value = item
        if kind == "close":
            self.close_event = value
            self._closed.set()
            self._outbound_send.send_nowait(value)
        else:
            message = orjson.loads(value)
            self.received.append((trio.current_time(), message))
            self._outbound_send.send_nowait({"type": "websocket.send", "message": message})

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _break(self) -> None:
        self._broken = True
        self._queue.clear()
        self.queued_bytes = 0
        self._wake()

    async def write_queued(self) -> None:
        while not self._broken:
            if self._queue and not self._stalled:
                await self._flush_queue()
            else:
                await self._changed.wait()

    async def _flush_queue(self) -> None:
        while self._queue and not self._stalled:
            item = self._queue.popleft()
            self.queued_bytes -= len(item[1]) if item[0] == "text" else 2
            self._deliver(item)
        self._wake()
        await trio.lowlevel.checkpoint()

    async def wait_room(self) -> None:
        await self._changed.wait()

    async def wait_flushed(self) -> None:
        while self._queue and not self._broken:
            if self._stalled:
                await self._changed.wait()
            else:
                await self._flush_queue()

    async def receive(self) -> str | bytes | None:
        if self._broken or self.peer_close_code is not None:
            return None
        item = await self._inbound.receive()
        self.last_activity = trio.current_time()
        if isinstance(item, tuple):
            kind, code = item
            self._peer_closed.set()
            if kind == "close":
                self.peer_close_code = code
                self._wake()
            else:  # connection lost: no close frame
                self._break()
            return None
        return item  # type: ignore[no-any-return]

    async def wait_peer_closed(self) -> None:
        # The fake peer answers a close frame at once (as a well-behaved client
        # does) once it could read it; a stalled peer never does.
        while self._stalled and not self._peer_closed.is_set() and not self._broken:
            await self._changed.wait()

    def release(self) -> None:
        self.released = True
        self._break()

    # -- controls ------------------------------------------------------------------

    _failure: BaseException | None = None

    def stall(self) -> None:
        """The device stops reading: every frame queues until :meth:`release_reader`."""
        self._stalled = True

    def release_reader(self) -> None:
        """The device reads again: queued and later frames are delivered."""
        self._stalled = False
        self._wake()

    def fail_sends(self, exc: BaseException) -> None:
        """The socket breaks on the next write (``exc`` is what send() would raise)."""
        self._failure = exc

    # -- the test's side (what a device would do) -----------------------------------

    def push(
        self, msg_type: int, payload: Any = None, *, correlation_id: Any = None, **extra: Any
    ) -> None:
        """Queue one client message, encoded as a JSON text frame."""
        message: dict[str, Any] = {"type": int(msg_type), "timestamp": 0, "payload": payload}
        if correlation_id is not None:
            message["correlation_id"] = correlation_id
        message.update(extra)
        self.push_text(orjson.dumps(message).decode())

    def push_text(self, text: Any) -> None:
        """Queue one message exactly as given (a str for text, bytes for binary)."""
        self._inbound_send.send_nowait(text)

    def push_disconnect(self, code: int = 1000) -> None:
        """The peer closes with ``code``; 1006 plays a TCP connection lost without a close."""
        self._inbound_send.send_nowait(("lost" if code == 1006 else "close", code))

    async def next_message(self) -> dict[str, Any]:
        """The next message the connection sent; AssertionError on the close frame."""
        event = await self._outbound.receive()
        assert event["type"] == "websocket.send", f"connection closed: {event}"
        message: dict[str, Any] = event["message"]
        return message

    async def wait_for(self, msg_type: int) -> dict[str, Any]:
        """The next sent message of ``msg_type``, skipping (and consuming) others."""
        while True:
            message = await self.next_message()
            if message["type"] == msg_type:
                return message

    def pending(self) -> list[dict[str, Any]]:
        """Take every message already delivered and not read yet (close frame excluded)."""
        messages = []
        while True:
            try:
                event = self._outbound.receive_nowait()
            except trio.WouldBlock:
                return messages
            if event["type"] == "websocket.send":
                messages.append(event["message"])

    async def wait_closed(self) -> int:
        """Wait for the close frame (without consuming messages); return its code."""
        await self._closed.wait()
        assert self.close_event is not None
        return int(self.close_event["code"])

    @property
    def is_closed(self) -> bool:
        return self.close_event is not None

    def close_calls(self) -> list[dict[str, Any]]:
        """The close frames the connection tried to send."""
        return list(self.closes_sent)

    def received_of(self, msg_type: int) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.received if m["type"] == msg_type]


@attrs.define
class Link:
    """A running Connection and its fake socket."""

    connection: Connection
    ws: FakeWebSocket
    done: trio.Event
    error: list[BaseException] = attrs.field(factory=list)

    @property
    def key(self) -> int:
        return self.connection.key


async def start_connection(nursery: trio.Nursery, app: SyncBridgeApp) -> Link:
    """Run a Connection over a new fake socket in ``nursery``, as the app would."""
    ws = FakeWebSocket()
    connection = Connection(
        key=next(_keys),
        service=app.service,
        settings=app.settings,
        transport=ws,
        client="fake:1",
    )
    link = Link(connection=connection, ws=ws, done=trio.Event())

    async def run() -> None:
        app.connections[connection.key] = connection
        try:
            await connection.run()
        except BaseException as exc:  # recorded for the test; Connection.run must not raise
            link.error.append(exc)
            raise
        finally:
            del app.connections[connection.key]
            link.done.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return link


async def authenticate(link: Link, token: str, **payload: Any) -> dict[str, Any]:
    """Send Auth and return the AuthSuccess payload."""
    link.ws.push(MessageType.AUTH, {"token": token, **payload}, correlation_id="auth")
    while True:
        reply = await link.ws.next_message()
        if reply.get("correlation_id") == "auth":
            break
    assert reply["type"] == MessageType.AUTH_SUCCESS, reply
    return dict(reply["payload"])


def make_app(**overrides: Any) -> SyncBridgeApp:
    """An app whose service clock (token expiry) follows trio's (mock) clock."""
    return SyncBridgeApp(make_settings(**overrides), clock=lambda: EPOCH + trio.current_time())


def token(device: str = "a", *, session: str = "s1", ttl: float = 900) -> str:
    """A token minted on the :func:`make_app` clock."""
    return mint(user="u1", device=device, session=session, ttl=ttl, now=EPOCH + trio.current_time())


async def connect(nursery: trio.Nursery, app: SyncBridgeApp, device: str, **kw: Any) -> Link:
    """A connection of ``device`` that has authenticated."""
    link = await start_connection(nursery, app)
    await authenticate(link, token(device, **kw))
    return link


async def still_open_for(link: Link, seconds: float) -> bool:
    """Let ``seconds`` of (mock) time pass; True if no close frame came meanwhile."""
    with trio.move_on_after(seconds):
        await link.ws.wait_closed()
    return not link.ws.is_closed


async def session_of(nursery: trio.Nursery, app: SyncBridgeApp, *devices: str) -> list[Link]:
    """Authenticated connections of ``devices`` in session s1, presence chatter drained."""
    links = [await connect(nursery, app, device) for device in devices]
    await trio.testing.wait_all_tasks_blocked()
    for link in links:
        link.ws.pending()
    return links


def pushes(link: Link) -> list[tuple[float, Any, int]]:
    """(delivery time, value, version) of each StateUpdate delivered to ``link``."""
    return [
        (t, m["payload"]["value"], m["payload"]["version"])
        for t, m in link.ws.received_of(MessageType.STATE_UPDATE)
    ]


def delivered_at(link: Link, msg_type: int) -> list[float]:
    """When each message of ``msg_type`` was delivered to ``link`` (trio time)."""
    return [t for t, _ in link.ws.received_of(msg_type)]


def publish_updates(link: Link, count: int) -> None:
    """Queue ``count`` updates of key k (values 0..count-1), then a Heartbeat."""
    for i in range(count):
        link.ws.push(MessageType.STATE_UPDATE, {"key": "k", "value": i})
    link.ws.push(MessageType.HEARTBEAT, {}, correlation_id="after")  # answered once they are out
