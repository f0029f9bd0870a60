"""A fake ASGI WebSocket transport on trio memory channels, for connection-level tests.

The test plays the ASGI server: it pushes ``websocket.receive`` /
``websocket.disconnect`` events for the connection to read, and reads what the
connection sends. ``send`` can be stalled (a device that stopped reading: the
socket buffer is full) until :meth:`FakeWebSocket.release`, or made to fail.
Like hypercorn, sends after the peer disconnected are accepted and dropped, and
sends are serialised by a lock; ``stall(shielded=True)`` also copies hypercorn's
shielded socket write, which the app cannot cancel.
"""

from __future__ import annotations

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
    """Both ends of one accepted WebSocket: ASGI ``receive``/``send`` and the test's side."""

    def __init__(self) -> None:
        self._inbound_send, self._inbound = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._outbound_send, self._outbound = trio.open_memory_channel[dict[str, Any]](math.inf)
        #: Every event the connection passed to ``send``, in call order (delivered or not).
        self.calls: list[dict[str, Any]] = []
        #: Every delivered ``websocket.send`` message, decoded, with its (trio) delivery time.
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.close_event: dict[str, Any] | None = None
        self._closed = trio.Event()
        self._gate: trio.Event | None = None
        self._shielded = False
        self._lock = trio.Lock()
        self._failure: BaseException | None = None
        self.peer_gone = False

    # -- the ASGI side (what the connection calls) ----------------------------

    async def receive(self) -> dict[str, Any]:
        event = await self._inbound.receive()
        if event["type"] == "websocket.disconnect":
            self.peer_gone = True
        return event

    async def send(self, event: dict[str, Any]) -> None:
        self.calls.append(event)
        async with self._lock:
            with trio.CancelScope(shield=self._shielded):
                while self._gate is not None:
                    await self._gate.wait()
            self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> None:
        if self.peer_gone or self.close_event is not None:
            return  # hypercorn drops what an app sends after the socket closed
        if self._failure is not None and event["type"] == "websocket.send":
            raise self._failure
        if event["type"] == "websocket.close":
            self.close_event = event
            self._closed.set()
        else:
            self.received.append((trio.current_time(), orjson.loads(event["text"])))
        self._outbound_send.send_nowait(event)

    # -- controls --------------------------------------------------------------

    def stall(self, *, shielded: bool = False) -> None:
        """Make every ``send`` block (a reader that stopped reading) until :meth:`release`.

        ``shielded``: the blocked write ignores cancellation, as in hypercorn.
        """
        self._shielded = shielded
        if self._gate is None:
            self._gate = trio.Event()

    def release(self) -> None:
        """Let stalled and later sends through."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    def fail_sends(self, exc: BaseException) -> None:
        """Make each later ``websocket.send`` raise ``exc`` (close frames still go out)."""
        self._failure = exc

    # -- the test's side (what a device would do) -----------------------------

    def push(
        self, msg_type: int, payload: Any = None, *, correlation_id: Any = None, **extra: Any
    ) -> None:
        """Queue one client message, encoded as a JSON text frame."""
        message: dict[str, Any] = {"type": int(msg_type), "timestamp": 0, "payload": payload}
        if correlation_id is not None:
            message["correlation_id"] = correlation_id
        message.update(extra)
        self.push_text(orjson.dumps(message).decode())

    def push_text(self, text: str) -> None:
        self.push_event({"type": "websocket.receive", "text": text})

    def push_event(self, event: dict[str, Any]) -> None:
        """Queue one raw ASGI event for the connection's ``receive``."""
        self._inbound_send.send_nowait(event)

    def push_disconnect(self, code: int = 1000) -> None:
        """The peer goes away (close frame received or TCP connection lost)."""
        self.push_event({"type": "websocket.disconnect", "code": code})

    async def next_message(self) -> dict[str, Any]:
        """The next message the connection sent; AssertionError on the close frame."""
        event = await self._outbound.receive()
        assert event["type"] == "websocket.send", f"connection closed: {event}"
        message: dict[str, Any] = orjson.loads(event["text"])
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
                messages.append(orjson.loads(event["text"]))

    async def wait_closed(self) -> int:
        """Wait for the close frame (without consuming messages); return its code."""
        await self._closed.wait()
        assert self.close_event is not None
        return int(self.close_event["code"])

    @property
    def is_closed(self) -> bool:
        return self.close_event is not None

    def close_calls(self) -> list[dict[str, Any]]:
        """The ``websocket.close`` events the connection tried to send."""
        return [e for e in self.calls if e["type"] == "websocket.close"]

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
        receive=ws.receive,
        send=ws.send,
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
