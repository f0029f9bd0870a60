"""RedisBroker: session events over Redis pub/sub, relayed to this process's connections.

Each message on a session's channel is ``<header JSON>\\n<frame>``; the header
names the publishing process, the connection to skip and the device to skip,
so the relay never parses the frame: it hands the same text to every local
outbox. A process subscribes to a session's channel while it has a connection
in that session.

Each watched session has its own bounded feed and delivery task, so a slow
consumer in one session holds back only that session. If a session's feed
overflows, or the pub/sub connection is lost while sessions are watched,
events may have been missed: the affected local connections are closed with
4000 and resume by version — never a silent gap.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final

import coredis
import orjson
import trio

from syncbridge.broker import ControlHandler, ReplyTicket
from syncbridge.hub import Hub
from syncbridge.redis.connection import STORE_FAILURES, Keys, RedisClient, call
from syncbridge.redis.ordering import AckOrder

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

#: Control messages (close orders) for every process; one slot on a cluster.
CONTROL_CHANNEL: Final = "syncbridge:{control}"
_BACKOFF_FIRST: Final = 0.1
_BACKOFF_MAX: Final = 5.0

# (connections to skip, device to skip, frame, version of a StateUpdate or None)
Event = tuple[tuple[int, ...], str | None, str, int | None]
_CONTROL_BYTES: Final = CONTROL_CHANNEL.encode()


class RedisBroker:
    """The Broker protocol over Redis (sharded pub/sub on a cluster)."""

    def __init__(
        self,
        client: RedisClient,
        hub: Hub,
        *,
        sharded: bool,
        timeout: float,
        feed_size: int = 1024,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self._on_lag = on_lag
        self.process_id = secrets.token_hex(6)
        self._client = client
        self._hub = hub
        self._sharded = sharded
        self._timeout = timeout
        self._feed_size = feed_size
        self._refs: Counter[str] = Counter()
        self._feeds: dict[str, trio.MemorySendChannel[Event]] = {}
        self._sessions: dict[bytes, str] = {}  # channel -> session id
        self._subscribing: dict[str, trio.Event] = {}
        self._pubsub: Any = None
        self._nursery: trio.Nursery | None = None
        self._missed = False  # events may have been missed while disconnected
        self.connected = trio.Event()
        self.reconnects = 0
        self._backoff = _BACKOFF_FIRST
        self.acks = AckOrder(hub, timeout=timeout)
        self._on_control: ControlHandler | None = None

    def reply_in_order(self, session_id: str, origin: int) -> ReplyTicket | None:
        """A ticket whose ack this process's relay places at its version's turn."""
        return self.acks.ticket(session_id, origin)

    @property
    def publish_command(self) -> str:
        """What scripts call to publish: SPUBLISH keeps a cluster's traffic on one shard."""
        return "SPUBLISH" if self._sharded else "PUBLISH"

    def header(self, origin: int | None, exclude_device: str | None) -> str:
        """The routing header put before a frame on the channel (with the time, for lag)."""
        stamp = time.time_ns() // 1_000_000
        return orjson.dumps([self.process_id, origin, exclude_device, stamp]).decode() + "\n"

    async def publish(
        self,
        session_id: str,
        frame: str,
        *,
        origin: int | None = None,
        exclude_device: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """PUBLISH the frame; every process's relay delivers it."""
        message = self.header(origin, exclude_device) + frame
        channel = Keys(session_id).channel
        send = self._client.spublish if self._sharded else self._client.publish
        await call("publish", timeout or self._timeout, lambda: send(channel, message))

    async def publish_control(self, message: bytes) -> None:
        """PUBLISH a control message; every connected process's relay hands it over.

        A process whose pub/sub connection is down misses it; it closes and
        resyncs its sessions' connections when it reconnects, and refused tokens
        are refused at every Auth anyway (they are checked in the store).
        """
        send = self._client.spublish if self._sharded else self._client.publish
        await call("publish", self._timeout, lambda: send(CONTROL_CHANNEL, message))

    def on_control(self, handler: ControlHandler) -> None:
        """Set the handler of control messages."""
        self._on_control = handler

    async def watch(self, session_id: str) -> None:
        """Subscribe to the session's channel on its first local connection.

        A watch that raises counts for nothing: its caller does not unwatch it.
        """
        self._refs[session_id] += 1
        if self._refs[session_id] > 1:
            # Another connection's SUBSCRIBE may still be in flight: this one's
            # AuthSuccess must not go out before the subscription is confirmed.
            pending = self._subscribing.get(session_id)
            if pending is not None:
                with trio.move_on_after(self._timeout):
                    await pending.wait()
            return
        channel = Keys(session_id).channel
        self._sessions[channel.encode()] = session_id
        self._start_feed(session_id)
        if self._pubsub is None:
            self._missed = True  # subscribed (and resynced) when the connection returns
            return
        confirmed = self._subscribing[session_id] = trio.Event()
        try:
            await call("subscribe", self._timeout, lambda: self._subscribe(channel))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.unwatch(session_id)
            raise
        finally:
            confirmed.set()
            if self._subscribing.get(session_id) is confirmed:
                del self._subscribing[session_id]

    async def unwatch(self, session_id: str) -> None:
        """Unsubscribe when the session's last local connection leaves."""
        if self._refs[session_id] <= 0:
            return
        self._refs[session_id] -= 1
        if self._refs[session_id] > 0:
            return
        del self._refs[session_id]
        channel = Keys(session_id).channel
        self._sessions.pop(channel.encode(), None)
        feed = self._feeds.pop(session_id, None)
        if feed is not None:
            feed.close()
        if self._pubsub is not None:
            try:
                await call("unsubscribe", self._timeout, lambda: self._unsubscribe(channel))
            except Exception:  # a lost connection drops every subscription anyway
                log.debug("unsubscribe from %s failed", channel, exc_info=True)

    async def _subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)

    async def _unsubscribe(self, channel: str) -> None:
        await self._pubsub.unsubscribe(channel)

    def _start_feed(self, session_id: str) -> None:
        assert self._nursery is not None, "RedisBroker.run must be started first"
        send, receive = trio.open_memory_channel[Event](self._feed_size)
        self._feeds[session_id] = send
        self._nursery.start_soon(self._deliver, session_id, receive)

    async def _deliver(self, session_id: str, feed: trio.MemoryReceiveChannel[Event]) -> None:
        async with feed:
            async for exclude, exclude_device, frame, version in feed:
                if exclude and version is not None:
                    # A change written here: its writer's ack goes out now, in order.
                    await self.acks.place(session_id, exclude[0], version)
                await self._hub.publish(
                    session_id, frame, exclude=exclude, exclude_device=exclude_device
                )

    def _dispatch(self, message: Mapping[str, Any]) -> None:
        if message["channel"] == _CONTROL_BYTES:
            if self._on_control is not None:
                self._on_control(message["data"])
            return
        session_id = self._sessions.get(message["channel"])
        feed = self._feeds.get(session_id) if session_id is not None else None
        if session_id is None or feed is None:
            return  # unsubscribed meanwhile
        data: bytes = message["data"]
        try:
            cut = data.index(b"\n")
            process, origin, exclude_device, *rest = orjson.loads(data[:cut])
            frame = data[cut + 1 :].decode()
        except (ValueError, TypeError) as exc:
            # Not ours (anyone with access to Redis can PUBLISH): it must not stop
            # the relay of every session of this process.
            log.warning("ignored a malformed message on session %s: %s", session_id, exc)
            return
        if rest and self._on_lag is not None:
            self._on_lag(max(0.0, time.time() - rest[0] / 1000))
        version = rest[1] if len(rest) > 1 and isinstance(rest[1], int) else None
        exclude = (origin,) if process == self.process_id and origin is not None else ()
        try:
            feed.send_nowait((exclude, exclude_device, frame, version))
        except trio.WouldBlock:
            closed = self._hub.close_session(session_id)
            log.warning(
                "session %s: %d events behind; closed %d local connections to resync",
                session_id,
                self._feed_size,
                closed,
            )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a pub/sub connection, reconnecting with backoff, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                try:
                    await self._listen()
                except* STORE_FAILURES as group:
                    log.warning(
                        "Redis pub/sub connection lost (%s); reconnecting in %.1fs",
                        _first_leaf(group),
                        self._backoff,
                    )
                finally:
                    self._pubsub = None
                    if self.connected.is_set():
                        self.connected = trio.Event()
                    if self._refs:
                        self._missed = True
                await trio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    async def _listen(self) -> None:
        client = self._client
        pubsub: Any = (
            client.sharded_pubsub(retry_policy=None)
            if isinstance(client, coredis.RedisCluster)
            else client.pubsub(retry_policy=None)
        )
        async with pubsub as ps:
            self._pubsub = ps
            channels = [Keys(sid).channel for sid in self._refs]
            await ps.subscribe(CONTROL_CHANNEL, *channels)
            if self._missed:
                self._resync()
            self.connected.set()
            self._backoff = _BACKOFF_FIRST
            log.info("Redis pub/sub connected (%d sessions)", len(channels))
            while True:
                message = await ps.get_message()
                if message is not None and message["type"] in ("message", "smessage"):
                    self._dispatch(message)

    def _resync(self) -> None:
        # Events published while we were disconnected never reach us: every
        # local connection of a watched session resumes by version instead.
        self._missed = False
        self.reconnects += 1
        closed = sum(self._hub.close_session(sid) for sid in list(self._refs))
        if closed:
            log.warning("closed %d connections to resync after a pub/sub reconnect", closed)


def _first_leaf(error: BaseException) -> BaseException:
    """The first real exception inside nested exception groups (for one log line)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
