"""RedisPresence: devices online across every process, gone by themselves after a crash.

Each connection is a member of the session's presence sorted set, scored by
an expiry that its process refreshes every PRESENCE_TTL/3. A process that
dies stops refreshing; any other process serving the session reaps the
expired members and publishes DeviceLeft for devices that went offline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
from coredis import PureToken

from syncbridge.errors import LimitExceeded, StoreUnavailable
from syncbridge.protocol.codec import encode
from syncbridge.protocol.messages import MessageType
from syncbridge.redis import scripts
from syncbridge.redis.batch import ScriptBatcher
from syncbridge.redis.connection import Keys, RedisClient, call

__all__ = ["RedisPresence"]

log = logging.getLogger(__name__)

_SEPARATOR = "\x1f"


class RedisPresence:
    """The PresenceStore protocol on Redis."""

    publishes = True

    def __init__(
        self,
        client: RedisClient,
        *,
        process_id: str,
        header: Callable[[int | None, str | None], str],
        publish_command: str,
        announce: Callable[[str, str], Awaitable[None]],
        ttl: float,
        max_devices_per_session: int,
        session_ttl: float,
        timeout: float,
        batch: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._batch = batch
        self._process_id = process_id
        self._header = header
        self._publish = publish_command
        self._announce = announce
        self._ttl_ms = int(ttl * 1000)
        self._refresh_interval = ttl / 3
        self._max_devices = max_devices_per_session
        self._key_ttl_ms = int(session_ttl * 1000)
        self._timeout = timeout
        self._clock = clock
        # This process's members, refreshed periodically: session -> member -> device
        self._local: dict[str, dict[str, str]] = {}
        self._join = client.register_script(scripts.PRESENCE_JOIN)
        self._leave = client.register_script(scripts.PRESENCE_LEAVE)
        self._reap = client.register_script(scripts.PRESENCE_REAP)
        # Every session's refresh and reap go out together, as pipelines, instead of
        # two round trips per session every PRESENCE_TTL/3 (a burst of CPU that
        # showed in the latency tail); not on a cluster, where they span shards.
        self._reaps = (
            ScriptBatcher(client, scripts.PRESENCE_REAP, what="presence reap", timeout=timeout)
            if batch
            else None
        )

    def _member(self, device_id: str, connection: int) -> str:
        # The scripts split a member at its first separator, so an id holding one
        # would count as another device. Token verification refuses such ids
        # (they are not printable); reaching here with one is our bug.
        if _SEPARATOR in device_id:
            raise RuntimeError(f"device id {device_id!r} holds the presence separator")
        return f"{device_id}{_SEPARATOR}{self._process_id}:{connection}"

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def join(
        self,
        session_id: str,
        *,
        device_id: str,
        user_id: str,
        connection: int,
        device_type: str | None,
        device_name: str | None,
        now: int,
        announce: str,
    ) -> bool:
        """Add the connection; publish DeviceJoined when its device came online."""
        keys = Keys(session_id)
        member = self._member(device_id, connection)
        now_ms = self._now_ms()
        description = orjson.dumps(
            {
                "device_id": device_id,
                "user_id": user_id,
                "device_type": device_type,
                "device_name": device_name,
                "connected_at": now,
                "last_seen": now,
            }
        )
        result: Any = await call(
            "presence join",
            self._timeout,
            lambda: self._join(
                keys=[keys.presence, keys.devices],
                args=[
                    member,
                    device_id,
                    now_ms + self._ttl_ms,
                    now_ms,
                    self._max_devices,
                    description,
                    max(self._key_ttl_ms, self._ttl_ms),
                    keys.channel,
                    self._header(connection, device_id) + announce,
                    self._publish,
                ],
            ),
        )
        came_online, count = result
        if came_online == -1:
            raise LimitExceeded(
                f"session already has {count} devices online; the limit is {self._max_devices}",
                status=429,
                error_code="TOO_MANY_DEVICES",
                details={"limit_devices": self._max_devices},
            )
        self._local.setdefault(session_id, {})[member] = device_id
        return bool(came_online)

    async def leave(
        self,
        session_id: str,
        *,
        device_id: str,
        user_id: str,
        connection: int,
        now: int,
        announce: str,
    ) -> bool:
        """Remove the connection; publish DeviceLeft when its device went offline."""
        keys = Keys(session_id)
        member = self._member(device_id, connection)
        local = self._local.get(session_id)
        if local is not None:
            local.pop(member, None)
            if not local:
                del self._local[session_id]
        description = await self._description(keys, device_id, last_seen=now)
        went: Any = await call(
            "presence leave",
            self._timeout,
            lambda: self._leave(
                keys=[keys.presence, keys.devices],
                args=[
                    member,
                    device_id,
                    self._now_ms(),
                    description,
                    keys.channel,
                    self._header(None, None) + announce,
                    self._publish,
                ],
            ),
        )
        return bool(went)

    async def _description(self, keys: Keys, device_id: str, *, last_seen: int) -> bytes:
        raw: Any = await call(
            "presence", self._timeout, lambda: self._client.hget(keys.devices, device_id)
        )
        entry = orjson.loads(raw) if raw else {"device_id": device_id}
        entry["last_seen"] = last_seen
        return orjson.dumps(entry)

    async def devices(self, session_id: str) -> list[dict[str, Any]]:
        """Known devices with ``is_online`` from unexpired members, online first."""
        keys = Keys(session_id)
        members: Any = await call(
            "presence",
            self._timeout,
            lambda: self._client.zrange(
                keys.presence, f"({self._now_ms()}", "+inf", sortby=PureToken.BYSCORE
            ),
        )
        online = {m.decode().partition(_SEPARATOR)[0] for m in members}
        raw: Any = await call("presence", self._timeout, lambda: self._client.hgetall(keys.devices))
        entries = []
        for value in raw.values():
            entry = orjson.loads(value)
            entry["is_online"] = entry.get("device_id") in online
            entries.append(entry)
        return sorted(entries, key=lambda d: (not d["is_online"], d.get("connected_at") or 0))

    def touch(self, session_id: str, device_id: str, now: int) -> None:
        """Signs of life are carried by the periodic refresh, not per message."""

    @property
    def session_count(self) -> int:
        """Sessions with a connection of this process."""
        return len(self._local)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh this process's members and reap other processes' expired ones."""
        async with trio.open_nursery() as nursery:
            if self._reaps is not None:
                await nursery.start(self._reaps.run)
            task_status.started()
            while True:
                await trio.sleep(self._refresh_interval)
                await self.refresh_all()

    async def refresh_all(self) -> None:
        """One round of upkeep: refresh every local member, reap every local session."""
        sessions = [sid for sid, members in self._local.items() if members]
        if not sessions:
            return
        try:
            if self._batch:
                await self._refresh_pipelined(sessions)
            else:
                for session_id in sessions:
                    await self._refresh(session_id)
        except StoreUnavailable as exc:
            log.warning("presence refresh of %d sessions failed: %s", len(sessions), exc.message)
        async with trio.open_nursery() as nursery:  # the reaps share pipelines
            for session_id in sessions:
                nursery.start_soon(self._reap_logged, session_id)

    async def _reap_logged(self, session_id: str) -> None:
        try:
            await self.reap(session_id)
        except StoreUnavailable as exc:
            log.warning("presence reap of %s failed: %s", session_id, exc.message)

    async def _refresh_pipelined(self, sessions: list[str]) -> None:
        expiry = self._now_ms() + self._ttl_ms

        async def send() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in sessions:
                    members = self._local.get(session_id)
                    if members:
                        mapping: dict[str | bytes, float] = dict.fromkeys(members, expiry)
                        pipe.zadd(Keys(session_id).presence, mapping)

        await call("presence refresh", self._timeout, send)

    async def _refresh(self, session_id: str) -> None:
        members = self._local.get(session_id)
        if not members:
            return
        keys = Keys(session_id)
        expiry = self._now_ms() + self._ttl_ms
        mapping: dict[str | bytes, float] = dict.fromkeys(members, expiry)
        await call(
            "presence refresh",
            self._timeout,
            lambda: self._client.zadd(keys.presence, mapping),
        )

    async def reap(self, session_id: str) -> list[str]:
        """Drop expired members of the session; announce devices that left. Returns them."""
        keys = Keys(session_id)
        flat: Any = await call(
            "presence reap",
            self._timeout,
            (lambda: reaps.call([keys.presence, keys.devices], [self._now_ms()]))
            if (reaps := self._reaps) is not None and reaps.running
            else (lambda: self._reap(keys=[keys.presence, keys.devices], args=[self._now_ms()])),
        )
        left: list[str] = []
        now = int(self._clock())
        for i in range(0, len(flat), 2):
            device_id = flat[i].decode()
            entry = orjson.loads(flat[i + 1])
            user_id = entry.get("user_id")
            frame = encode(
                MessageType.DEVICE_LEFT,
                {"device_id": device_id, "user_id": user_id, "last_seen": now},
                timestamp=now,
                session_id=session_id,
                user_id=user_id,
                device_id=device_id,
            )
            await self._announce(session_id, frame)
            log.info("device %s of session %s expired (its process is gone)", device_id, session_id)
            left.append(device_id)
        return left
