"""The load generator: worker processes running many lean WebSocket clients.

Each worker is one process with one asyncio event loop and a hand-rolled
RFC 6455 client (``RawClient``): handshake, masked text frames out, unmasked
frames in, ping → pong, close. Parsing a 300-byte server frame costs ~1.2 µs
here against ~3 µs with the ``websockets`` sans-IO protocol and ~6.5 µs with
wsproto (trio-websocket's engine); see docs/performance.md. ``--client
websockets`` swaps in the websockets sans-IO protocol to cross-check figures.

Two protocol modes drive the servers under test with the same frames:

``syncbridge``  Auth (7) → AuthSuccess (8), optional SnapshotRequest (3) → (4);
                writers send StateUpdate (5) and get an ack (5 with version);
                every other device of the session receives the broadcast (5).
``baseline``    ``{"room": "s<N>"}`` → ``{"type": 8}``; writers then send the
                very same StateUpdate frames, which the baseline server relays
                verbatim to the room's other members (no ack).
``socketio``    Engine.IO v4 over a plain WebSocket at
                ``/socket.io/?EIO=4&transport=websocket``: the server's open
                packet ``0{…}``, then ``40{"room": "s<N>"}`` → ``40{"sid": …}``
                (namespace connect, the join); writers send the same StateUpdate
                as the event ``42["update",{…}]``, which the server emits to the
                room's other members; the server's ping ``2`` is answered ``3``.

The value of every update carries the send time (``time.monotonic_ns()``:
CLOCK_MONOTONIC, one clock for every process of the host) and the step number,
so receivers compute one-way latency and count deliveries per step.

The parent (``LoadGen``) talks to the workers over pipes; each command returns
counters, latencies (µs, as packed arrays) and the worker's own CPU time.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import multiprocessing as mp
import os
import resource
import struct
import time
from collections.abc import Sequence
from typing import Any

import orjson

from bench.common import HOST, pin_self, raise_fd_limit

try:  # C implementation shipped with websockets
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - pure Python fallback

    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


monotonic_ns = time.monotonic_ns
loads = orjson.loads
PAD = "x" * 110  # makes an update frame ~200 bytes
UPDATE = b'{"type":5,"payload":{"key":"k","value":{"t":%d,"s":%d,"p":"%s"}},"correlation_id":%d}'
# socket.io: the same StateUpdate as the data of an "update" event (EIO message 4,
# SIO event 2, default namespace).
SIO_UPDATE = b'42["update",' + UPDATE + b"]"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- clients


class ClosedError(Exception):
    pass


class RawClient(asyncio.Protocol):
    """A minimal WebSocket client over an asyncio transport."""

    def __init__(self, worker: Worker, session: int, device: int, port: int) -> None:
        self.worker = worker
        self.session = session
        self.device = device
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closed = False
        self.close_code: int | None = None
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wait_type: int | None = None
        self.waiter: asyncio.Future[dict[str, Any]] | None = None
        self.writer = False
        self.listeners = 0
        self.sent = 0  # updates sent in the current step
        self.inflight = 0
        self.seq = 0
        self._key = ""
        # socket.io: set by the server's Engine.IO open packet (may arrive with the 101)
        self.eio_open: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if worker.protocol == "socketio" else None
        )

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.worker.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                "Upgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                status = head.split(b"\r\n", 1)[0]
                self._fail(f"handshake refused: {status!r}")
                return
            self.open = True
            if not self.handshake.done():
                self.handshake.set_result(None)
        pos = 0
        size = len(buf)
        on_message = self.worker.on_frame
        while size - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            opcode = b0 & 0x0F
            if opcode in (1, 2, 0):
                if not b0 & 0x80:  # fragment
                    self.fragments.append(payload)
                    continue
                if opcode == 0 and self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments.clear()
                on_message(self, payload)
            elif opcode == 9:
                self._send_frame(0x8A, payload)
            elif opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.worker.server_closes += 1
                self.worker.note_close(self.close_code, payload[2:])
                self.close()
                break
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.worker.lost_connections += 1
        self.closed = True
        self.open = False
        if not self.handshake.done():
            self.handshake.set_exception(ClosedError("connection lost during handshake"))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ClosedError(f"closed (code {self.close_code})"))
        self._no_open("connection lost before the open packet")

    # -- sending ----------------------------------------------------------------

    def _send_frame(self, first: int, payload: bytes) -> None:
        if self.transport is None or self.closed:
            return
        n = len(payload)
        mask = os.urandom(4)
        if n < 126:
            header = bytes((first, 0x80 | n))
        elif n < 65536:
            header = bytes((first, 0xFE)) + n.to_bytes(2, "big")
        else:
            header = bytes((first, 0xFF)) + n.to_bytes(8, "big")
        self.transport.write(header + mask + _apply_mask(payload, mask))

    def send(self, payload: bytes) -> None:
        self._send_frame(0x81, payload)

    def close(self, code: int = 1000) -> None:
        if self.closed:
            return
        self._send_frame(0x88, struct.pack("!H", code))
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, reason: str) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ClosedError(reason))
        self._no_open(reason)
        self.close()

    def _no_open(self, reason: str) -> None:
        """socket.io: no Engine.IO open packet will come (raised if connect awaits it)."""
        if self.eio_open is not None and not self.eio_open.done():
            self.eio_open.set_exception(ClosedError(reason))
            self.eio_open.exception()  # retrieved: no "never retrieved" warning if unawaited

    async def request(self, payload: bytes, reply_type: int, timeout: float) -> dict[str, Any]:
        """Send ``payload`` and wait for the first message of ``reply_type``."""
        self.wait_type = reply_type
        self.waiter = asyncio.get_running_loop().create_future()
        self.send(payload)
        try:
            async with asyncio.timeout(timeout):
                return await self.waiter
        finally:
            self.wait_type = None
            self.waiter = None


class WebsocketsClient(RawClient):
    """The same client on the ``websockets`` sans-IO protocol (for cross-checks)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        uri = parse_uri(f"ws://{HOST}:{self.port}{self.worker.path}")
        self.proto = ClientProtocol(uri, max_size=None)
        self.proto.send_request(self.proto.connect())
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.proto.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        self.proto.receive_data(data)
        on_message = self.worker.on_frame
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self._fail(f"handshake refused: {event.status_code}")
                    return
                self.open = True
                self.handshake.set_result(None)
            elif isinstance(event, Frame):
                if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                    on_message(self, event.data)
                elif event.opcode == Opcode.CLOSE:
                    self.close_code = int.from_bytes(event.data[:2], "big") or 1005
                    self.worker.server_closes += 1
                    self.worker.note_close(self.close_code, event.data[2:])
        self._flush()

    def _send_frame(self, first: int, payload: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if first == 0x81:
            self.proto.send_text(payload)
        elif first == 0x8A:
            self.proto.send_pong(payload)
        elif first == 0x88:
            self.proto.send_close(int.from_bytes(payload[:2], "big"))
        self._flush()


CLIENTS: dict[str, type[RawClient]] = {"raw": RawClient, "websockets": WebsocketsClient}


# --------------------------------------------------------------------------- worker


class Worker:
    """One load-generator process: its clients and their counters."""

    def __init__(self, protocol: str, client: str) -> None:
        self.protocol = protocol
        self.client_class = CLIENTS[client]
        self.clients: list[RawClient] = []
        self.writers: list[RawClient] = []
        self.step = -1
        self.received = 0
        self.stale = 0
        self.acks = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.server_closes = 0
        self.lost_connections = 0
        self.close_codes: dict[str, int] = {}
        self.latencies: list[int] = []
        self.ack_latencies: list[int] = []
        self.first_recv = 0
        self.last_recv = 0
        self.closed_loop = False
        self.count_acks = False
        self.step_end = 0
        self.idle = asyncio.Event()
        self.expected = 0
        self.path = SIO_PATH if protocol == "socketio" else "/ws"
        self.update_frame = SIO_UPDATE if protocol == "socketio" else UPDATE
        # What the clients call for each text/binary frame.
        self.on_frame = self.on_sio_frame if protocol == "socketio" else self.on_message

    def note_close(self, code: int, reason: bytes) -> None:
        key = str(code)
        self.close_codes[key] = self.close_codes.get(key, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"close {code} {reason[:80]!r}")

    # -- receiving ----------------------------------------------------------------

    def on_message(self, ws: RawClient, data: bytes, message: Any = None) -> None:
        if message is None:
            message = loads(data)
        kind = message.get("type")
        if kind == 5:
            value = message["payload"]["value"]
            now = monotonic_ns()
            if value["s"] != self.step:
                self.stale += 1
                return
            if ws.writer:  # the ack of our own update (syncbridge mode only)
                self.acks += 1
                self.ack_latencies.append((now - value["t"]) // 1000)
                ws.inflight -= 1
                if self.closed_loop and now < self.step_end:
                    self.send_update(ws, now)
                elif self.count_acks and self.acks >= self.expected:
                    self.idle.set()
            else:
                self.received += 1
                self.latencies.append((now - value["t"]) // 1000)
                if not self.first_recv:
                    self.first_recv = now
                self.last_recv = now
                if self.received >= self.expected:
                    self.idle.set()
            return
        waiter = ws.waiter
        if waiter is not None and kind == ws.wait_type and not waiter.done():
            waiter.set_result(message)
        elif kind in (6, 9):
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(data[:200].decode(errors="replace"))
            if waiter is not None and not waiter.done():
                waiter.set_exception(ClosedError(data[:200].decode(errors="replace")))

    def on_sio_frame(self, ws: RawClient, data: bytes) -> None:
        """One Engine.IO packet (socket.io mode): events go on to ``on_message``
        as the decoded StateUpdate; the namespace connect reply counts as type 8."""
        kind = data[:2]
        if kind == b"42":  # message + event: ["update", {...}]
            event = loads(data[2:])
            self.on_message(ws, data, event[1] if len(event) > 1 else {})
        elif data[:1] == b"2":  # Engine.IO ping
            ws.send(b"3" + data[1:])
        elif kind == b"40":  # namespace connected: the join is done
            self.on_message(ws, data, {"type": 8})
        elif data[:1] == b"0":  # Engine.IO open
            if ws.eio_open is not None and not ws.eio_open.done():
                ws.eio_open.set_result(None)
        elif kind in (b"44", b"41") or data[:1] == b"1":  # refused / disconnected / close
            self.on_message(ws, data, {"type": 9})
        # anything else (noop "6", acks) is not used by the benchmark

    def send_update(self, ws: RawClient, now: int) -> None:
        ws.seq += 1
        ws.sent += 1
        ws.inflight += 1
        ws.send(self.update_frame % (now, self.step, PAD.encode(), ws.seq))

    # -- commands -----------------------------------------------------------------

    async def connect(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Open, authenticate (or join) and optionally snapshot every client in ``spec``."""
        loop = asyncio.get_running_loop()
        cpu0, t0 = _cpu(), time.monotonic()
        sem = asyncio.Semaphore(spec["concurrency"])
        latencies: list[int] = []
        failures: list[str] = []
        timeout = spec.get("timeout", 30.0)
        snapshot = spec.get("snapshot", False)

        async def one(item: Sequence[Any]) -> None:
            session, device, port, token, writer, listeners = item
            async with sem:
                started = monotonic_ns()
                try:
                    async with asyncio.timeout(timeout):
                        _transport, ws = await loop.create_connection(
                            lambda: self.client_class(self, session, device, port), HOST, port
                        )
                        self.clients.append(ws)
                        await ws.handshake
                        if self.protocol == "syncbridge":
                            auth = orjson.dumps(
                                {"type": 7, "payload": {"token": token}, "correlation_id": "a"}
                            )
                            await ws.request(auth, 8, timeout)
                            if snapshot:
                                await ws.request(b'{"type":3,"correlation_id":"s"}', 4, timeout)
                        elif self.protocol == "socketio":
                            assert ws.eio_open is not None
                            await ws.eio_open
                            join = b'40{"room":"s%d"}' % session
                            await ws.request(join, 8, timeout)
                        else:
                            await ws.request(orjson.dumps({"room": f"s{session}"}), 8, timeout)
                except (OSError, ClosedError, TimeoutError) as exc:
                    if len(failures) < 5:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    failures_count[0] += 1
                    return
                latencies.append((monotonic_ns() - started) // 1000)
                ws.writer = writer
                ws.listeners = listeners
                if writer:
                    self.writers.append(ws)

        failures_count = [0]
        await asyncio.gather(*(one(item) for item in spec["clients"]))
        return {
            "ok": len(latencies),
            "failed": failures_count[0],
            "failures": failures,
            "latencies": array.array("q", latencies).tobytes(),
            "cpu": _cpu() - cpu0,
            "wall": time.monotonic() - t0,
        }

    async def run_step(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Send updates for ``duration`` (open loop at ``rate`` or closed loop with
        ``window`` in flight per writer), then wait up to ``drain`` for the rest."""
        self.step = spec["step"]
        self.received = self.acks = self.stale = 0
        self.first_recv = self.last_recv = 0
        self.latencies = []
        self.ack_latencies = []
        self.expected = 1 << 62
        self.idle = asyncio.Event()
        errors0, closes0, lost0 = self.errors, self.server_closes, self.lost_connections
        writers = [w for w in self.writers if not w.closed]
        for w in writers:
            w.sent = w.inflight = 0
        start = spec["start_at"]
        duration_ns = int(spec["duration"] * 1e9)
        end = start + duration_ns
        self.step_end = end
        delay = (start - monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        cpu0 = _cpu()
        max_lag = 0
        sent = 0
        if not writers:
            await asyncio.sleep(spec["duration"])
        elif spec["mode"] == "closed":
            self.closed_loop = True
            now = monotonic_ns()
            for w in writers:
                for _ in range(spec["window"]):
                    self.send_update(w, now)
            await asyncio.sleep(max(0.0, (end - monotonic_ns()) / 1e9))
            sent = sum(w.sent for w in writers)
        else:
            self.closed_loop = False
            rate = spec["rate"]  # updates/s from this worker
            n_writers = len(writers)
            while True:
                now = monotonic_ns()
                if now >= end:
                    break
                due = int((now - start) * rate / 1e9)
                if due - sent > max_lag:
                    max_lag = due - sent
                while sent < due:
                    self.send_update(writers[sent % n_writers], now)
                    sent += 1
                await asyncio.sleep(0.001)
        send_end = monotonic_ns()
        self.closed_loop = False
        expected = sum(w.sent * w.listeners for w in writers)
        self.count_acks = spec["count"] == "acks"
        self.expected = sum(w.sent for w in writers) if self.count_acks else expected
        # Wait for the stragglers: as long as they keep coming (an overloaded
        # server drains its backlog), up to ``drain`` seconds in all; give up after
        # ``stall`` seconds without progress. What never arrives is lost.
        drain_end = monotonic_ns() + int(spec["drain"] * 1e9)
        progress, last_progress = -1, monotonic_ns()
        while True:
            done = self.acks if self.count_acks else self.received
            now = monotonic_ns()
            if done >= self.expected or now >= drain_end:
                break
            if done != progress:
                progress, last_progress = done, now
            elif now - last_progress > spec.get("stall", 3.0) * 1e9:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await self.idle.wait()
        cpu = _cpu() - cpu0
        return {
            "sent": sum(w.sent for w in writers),
            "expected": expected,
            "received": self.received,
            "acks": self.acks,
            "stale": self.stale,
            "latencies": array.array("q", self.latencies).tobytes(),
            "ack_latencies": array.array("q", self.ack_latencies).tobytes(),
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
            "send_end": send_end,
            "start": start,
            "max_send_lag": max_lag,
            "errors": self.errors - errors0,
            "server_closes": self.server_closes - closes0,
            "lost_connections": self.lost_connections - lost0,
            "error_samples": self.error_samples[:5],
            "close_codes": dict(self.close_codes),
            "cpu": cpu,
            "writers": len(writers),
        }

    async def heartbeats(self, period: float) -> None:
        """Keep every SyncBridge socket inside its liveness deadline (one Heartbeat
        per client per ``period``), spread evenly over the period."""
        if self.protocol != "syncbridge":
            return
        index = 0
        while True:
            await asyncio.sleep(0.5)
            clients = self.clients
            if not clients:
                continue
            share = max(1, int(len(clients) * 0.5 / period))
            for _ in range(share):
                index = (index + 1) % len(clients)
                ws = clients[index]
                if ws.open and not ws.closed:
                    ws.send(b'{"type":1}')

    def close_all(self) -> dict[str, Any]:
        open_now = sum(1 for c in self.clients if c.open and not c.closed)
        for c in self.clients:
            c.close()
        self.clients.clear()
        self.writers.clear()
        return {"closed": open_now, "close_codes": dict(self.close_codes)}

    def status(self) -> dict[str, Any]:
        return {
            "open": sum(1 for c in self.clients if c.open and not c.closed),
            "server_closes": self.server_closes,
            "lost_connections": self.lost_connections,
            "errors": self.errors,
            "close_codes": dict(self.close_codes),
            "error_samples": self.error_samples[:5],
            "cpu": _cpu(),
        }


async def _worker_main(pipe: Any, protocol: str, client: str, heartbeat: float) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(protocol, client)
    beats = asyncio.create_task(worker.heartbeats(heartbeat))
    try:
        while True:
            command, spec = await loop.run_in_executor(None, pipe.recv)
            if command == "connect":
                reply = await worker.connect(spec)
            elif command == "step":
                reply = await worker.run_step(spec)
            elif command == "status":
                reply = worker.status()
            elif command == "close":
                reply = worker.close_all()
                await asyncio.sleep(0.2)  # let the close frames go out
            elif command == "exit":
                pipe.send({})
                return
            else:
                reply = {"error": f"unknown command {command}"}
            pipe.send(reply)
    finally:
        beats.cancel()


def _worker_entry(pipe: Any, protocol: str, client: str, heartbeat: float, cpus: str) -> None:
    pin_self(cpus)
    raise_fd_limit()
    asyncio.run(_worker_main(pipe, protocol, client, heartbeat))


# --------------------------------------------------------------------------- parent side


class LoadGen:
    """``workers`` load-generator processes; commands go to all and replies are merged."""

    def __init__(
        self,
        workers: int,
        protocol: str,
        *,
        client: str = "raw",
        cpus: str,
        heartbeat: float = 15.0,
        timeout: float = 120.0,
    ) -> None:
        ctx = mp.get_context("fork")
        self.timeout = timeout
        self.pipes = []
        self.procs = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_entry,
                args=(child, protocol, client, heartbeat, cpus),
                daemon=True,
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def call(self, command: str, specs: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """Send one command to every worker (spec per worker); wait for all replies."""
        for pipe, spec in zip(self.pipes, specs, strict=True):
            pipe.send((command, spec))
        deadline = time.monotonic() + (timeout or self.timeout)
        replies = []
        for pipe in self.pipes:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not pipe.poll(remaining):
                raise TimeoutError(f"load generator did not answer {command!r} in time")
            replies.append(pipe.recv())
        return replies

    def call_all(self, command: str, spec: Any = None, timeout: float | None = None) -> list[Any]:
        return self.call(command, [spec] * len(self.pipes), timeout)

    def shutdown(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("exit", None))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def unpack(blob: bytes) -> list[int]:
    values = array.array("q")
    values.frombytes(blob)
    return values.tolist()
