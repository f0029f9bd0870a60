"""One accepted WebSocket: a non-blocking socket driven by websockets' sans-IO protocol.

websockets' :class:`~websockets.server.ServerProtocol` does all the framing,
masking, UTF-8 and close-handshake rules; this class only moves bytes between it
and the socket, trio-style:

- **Writes never block.** :meth:`send_text` frames the message and writes it to
  the socket at once when nothing is queued (no task switch: the architecture
  brief measured 5-8x more deliveries per core this way); what the kernel does
  not take is queued, in order, for the connection's writer task
  (:meth:`write_queued`), which is the only task that *waits* on the socket.
  The queue itself is bounded by the caller (the connection's outbox counts
  :attr:`queued_frames` and :attr:`queued_bytes`).
- **Reads are bounded by the protocol.** The protocol refuses a frame whose
  header announces more than ``max_message_bytes`` (across fragments) before
  its payload is read, so an oversize message is never buffered; it answers
  1009 itself.
- Pings from the peer are answered by the protocol; every frame received (pongs
  included) moves :attr:`last_activity`, which is what liveness reads.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Final

import trio
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

__all__ = ["WebSocket"]

_RECEIVE_BYTES: Final = 65536
# One send() takes at most this much of the queue, joined (bounds the copy).
_WRITE_BATCH_BYTES: Final = 256 * 1024


class WebSocket:
    """An open WebSocket after its handshake; see the module docstring."""

    # Slots: one of these lives as long as each idle socket (no per-instance dict).
    __slots__ = (
        "_broken",
        "_eof_pending",
        "_events",
        "_fragment_text",
        "_fragments",
        "_protocol",
        "_queue",
        "_released",
        "_room",
        "_sock",
        "_wake_writer",
        "last_activity",
        "peer_close_code",
        "peer_close_reason",
        "queued_bytes",
    )

    def __init__(self, sock: socket.socket, protocol: ServerProtocol) -> None:
        self._sock = sock
        self._protocol = protocol
        # Lists, not deques: an empty deque costs ~600 bytes, times every idle socket.
        self._queue: list[bytes | memoryview] = []
        self.queued_bytes = 0
        self._wake_writer = trio.Event()
        self._room = trio.Event()
        self._eof_pending = False
        self._broken = False
        self._released = False
        self._events: list[object] = []
        self._fragments: list[bytes] = []
        self._fragment_text = False
        #: trio time of the last frame (or byte) received from the peer.
        self.last_activity = trio.current_time()
        #: Set once the peer's close frame arrived: its code (1005 when it gave none).
        self.peer_close_code: int | None = None
        self.peer_close_reason = ""

    def queue_events(self, events: Sequence[object]) -> None:
        """Events the protocol parsed before this object existed (during the handshake)."""
        self._events.extend(events)

    # -- state ------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """True until a close frame was sent or received, or the socket broke."""
        return self._protocol.state is State.OPEN and not self._broken

    @property
    def queued_frames(self) -> int:
        """Frames (or parts of one) written by us and not yet taken by the kernel."""
        return len(self._queue)

    @property
    def sent_close_code(self) -> int | None:
        """The code of the close frame we sent (ours, or the protocol's: 1009, 1002, 1007)."""
        sent = self._protocol.close_sent
        return None if sent is None else int(sent.code)

    @property
    def sent_close_reason(self) -> str:
        sent = self._protocol.close_sent
        return "" if sent is None else sent.reason

    # -- sending (never blocks) -------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        """Send one text message (UTF-8 ``payload``); dropped once the socket is closing."""
        if not self.open:
            return
        if self._protocol.extensions:
            self._protocol.send_text(payload)
            self.flush_protocol()
        else:
            # The same serialisation the protocol uses (server frames are not
            # masked), without its per-call bookkeeping.
            self._write(Frame(Opcode.TEXT, payload).serialize(mask=False))

    def send_ping(self) -> None:
        """Send a ping (its pong is a sign of life, like any frame)."""
        if not self.open:
            return
        self._protocol.send_ping(b"")
        self.flush_protocol()

    def send_close(self, code: int, reason: str) -> None:
        """Start the closing handshake (no-op when it already started)."""
        if self._protocol.state is State.OPEN and not self._broken:
            try:
                self._protocol.send_close(code, reason)
            except InvalidState:  # pragma: no cover - guarded by the state check
                return
            self.flush_protocol()

    def flush_protocol(self) -> None:
        """Write what the protocol has queued (handshake response, pongs, close frames)."""
        for data in self._protocol.data_to_send():
            if data:
                self._write(data)
            else:  # the protocol asks for end of stream once the queue is out
                self._eof_pending = True
                if not self._queue:
                    self._send_eof()

    def _write(self, data: bytes) -> None:
        if self._broken:
            return
        if not self._queue:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._break()
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]
            self._wake_writer.set()
        self._queue.append(data)
        self.queued_bytes += len(data)

    def _send_eof(self) -> None:
        self._eof_pending = False
        if not self._broken:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._break()

    def _break(self) -> None:
        self._broken = True
        self._queue.clear()
        self.queued_bytes = 0
        self._room.set()
        self._wake_writer.set()

    # -- the writer task ----------------------------------------------------------

    async def write_queued(self) -> None:
        """Write what the kernel did not take at once, as the socket allows; runs until
        cancelled or the socket breaks (the connection's writer task)."""
        while not self._broken:
            if not self._queue:
                self._wake_writer = trio.Event()
                await self._wake_writer.wait()
                continue
            if await self._wait_writable():
                self._write_some()

    async def _wait_writable(self) -> bool:
        # release() from another task (a shutdown past its deadline) wakes this
        # waiter with ClosedResourceError: the socket is gone, not our bug.
        try:
            await trio.lowlevel.wait_writable(self._sock)
        except trio.ClosedResourceError:
            self._break()
            return False
        return not self._broken

    def _write_some(self) -> None:
        queue = self._queue
        if len(queue) == 1 or len(queue[0]) >= _WRITE_BATCH_BYTES:
            data: bytes | memoryview = queue[0]
        else:
            batch: list[bytes | memoryview] = []
            size = 0
            for chunk in queue:
                if size + len(chunk) > _WRITE_BATCH_BYTES and batch:
                    break
                batch.append(chunk)
                size += len(chunk)
            data = b"".join(batch)
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            return
        except OSError:
            self._break()
            return
        self.queued_bytes -= sent
        done = 0
        while sent:
            head = queue[done]
            if len(head) <= sent:
                sent -= len(head)
                done += 1
            else:
                queue[done] = memoryview(head)[sent:]
                sent = 0
        del queue[:done]
        self._room.set()
        self._room = trio.Event()
        if not queue and self._eof_pending:
            self._send_eof()

    async def wait_room(self) -> None:
        """Wait until the writer has written something (or the socket broke)."""
        await self._room.wait()

    async def wait_flushed(self) -> None:
        """Write out everything queued (bounded by the caller's deadline)."""
        while self._queue and not self._broken:
            if await self._wait_writable():
                self._write_some()

    # -- receiving ----------------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        """The next message: ``str`` for text, ``bytes`` for binary; None once closed.

        After None, :attr:`peer_close_code` says whether the peer closed, and
        :attr:`sent_close_code` whether we (or the protocol: 1009, 1002, 1007) did.
        """
        protocol = self._protocol
        events = self._events
        while True:
            while events:
                message = self._on_frame(events.pop(0))
                if message is not None:
                    return message
            if protocol.state is not State.OPEN or self._broken:
                return None
            data = await self._receive_some()
            self.last_activity = trio.current_time()
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            del data  # not kept alive while the socket idles
            events.extend(protocol.events_received())
            self.flush_protocol()

    async def _receive_some(self) -> bytes:
        while True:
            try:
                data = self._sock.recv(_RECEIVE_BYTES)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self._sock)
                except trio.ClosedResourceError:  # released by another task
                    self._break()
                    return b""
                continue
            except OSError:
                self._break()
                return b""
            # A peer that never stops sending must not starve other tasks.
            await trio.lowlevel.checkpoint()
            return data

    def _on_frame(self, event: object) -> str | bytes | None:
        if not isinstance(event, Frame):  # pragma: no cover - only frames after the handshake
            return None
        opcode = event.opcode
        data = bytes(event.data)  # already bytes: no copy
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not event.fin:
                self._fragments = [data]
                self._fragment_text = opcode is Opcode.TEXT
                return None
            return self._message(data, opcode is Opcode.TEXT)
        if opcode is Opcode.CONT:
            self._fragments.append(data)
            if not event.fin:
                return None
            data = b"".join(self._fragments)
            self._fragments = []
            return self._message(data, self._fragment_text)
        if opcode is Opcode.CLOSE:
            received = self._protocol.close_rcvd
            self.peer_close_code = 1005 if received is None else int(received.code)
            self.peer_close_reason = "" if received is None else received.reason
        return None

    def _message(self, data: bytes, text: bool) -> str | bytes | None:
        if not text:
            return data
        try:
            return data.decode()
        except UnicodeDecodeError:
            # RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection.
            self._protocol.fail(1007, "invalid UTF-8 in a text message")
            self.flush_protocol()
            return None

    # -- closing ------------------------------------------------------------------

    async def wait_peer_closed(self) -> None:
        """Read and discard until the peer's close frame or end of stream.

        Once both close frames have crossed, the closing handshake is complete: a
        server closes the TCP connection then (RFC 6455 §7.1.1), it does not wait for
        the client's end of stream (the client waits for ours).
        """
        protocol = self._protocol
        for event in (*self._events, *protocol.events_received()):
            self._on_frame(event)
        self._events.clear()
        while (
            protocol.close_rcvd is None and protocol.state is not State.CLOSED and not self._broken
        ):
            data = await self._receive_some()
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in protocol.events_received():
                self._on_frame(event)
            self.flush_protocol()

    def release(self) -> None:
        """Close the socket now (idempotent); the connection is over.

        Tasks waiting on the socket wake up and see it broken.
        """
        if self._released:
            return
        self._released = True
        self._break()
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
