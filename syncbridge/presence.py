"""Which devices of each session are online: the PresenceStore protocol, and memory presence.

The Redis version (``syncbridge.redis.presence``) keeps the same facts in Redis
with expiry, so presence spans processes and a crashed process's devices leave.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

from syncbridge.errors import LimitExceeded

__all__ = ["Device", "MemoryPresence", "Presence", "PresenceStore"]


class PresenceStore(Protocol):
    """Presence as the service uses it.

    ``announce`` is the DeviceJoined/DeviceLeft frame for the session's other
    devices; a store with ``publishes`` True delivers it itself (atomically with
    the change), otherwise the caller does when the result is True.
    """

    publishes: bool

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
        """Record a connection; True when its device came online. LimitExceeded at the cap."""
        ...

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
        """Forget a connection; True when its device went offline."""
        ...

    async def devices(self, session_id: str) -> list[dict[str, Any]]:
        """The DeviceList entries of a session."""
        ...

    def touch(self, session_id: str, device_id: str, now: int) -> None:
        """A sign of life from a device (may be ignored by stores that refresh otherwise)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background upkeep until cancelled."""
        ...


@attrs.define(kw_only=True)
class Device:
    """One device of a session and the connections it has open here."""

    device_id: str
    user_id: str
    device_type: str | None
    device_name: str | None
    connected_at: int
    last_seen: int
    connections: set[int] = attrs.field(factory=set)

    @property
    def is_online(self) -> bool:
        """Online while at least one of its connections is open."""
        return bool(self.connections)

    def describe(self) -> dict[str, Any]:
        """The v1 DeviceList entry."""
        return {
            "device_id": self.device_id,
            "user_id": self.user_id,
            "device_type": self.device_type,
            "device_name": self.device_name,
            "connected_at": self.connected_at,
            "last_seen": self.last_seen,
            "is_online": self.is_online,
        }


class Presence:
    """Session -> devices. A session is forgotten once none of its devices is online."""

    def __init__(self, *, max_devices_per_session: int) -> None:
        self._sessions: dict[str, dict[str, Device]] = {}
        self._max_devices = max_devices_per_session

    def join(
        self,
        session_id: str,
        *,
        device_id: str,
        user_id: str,
        connection: int,
        device_type: str | None,
        device_name: str | None,
        now: int,
    ) -> bool:
        """Record a connection of a device; True when the device just came online."""
        devices = self._sessions.setdefault(session_id, {})
        device = devices.get(device_id)
        if device is None or not device.is_online:
            online = sum(1 for d in devices.values() if d.is_online)
            if online >= self._max_devices:
                if not devices:
                    del self._sessions[session_id]
                raise LimitExceeded(
                    f"session already has {online} devices online; the limit is "
                    f"{self._max_devices}",
                    status=429,
                    error_code="TOO_MANY_DEVICES",
                    details={"limit_devices": self._max_devices},
                )
        if device is None:
            device = Device(
                device_id=device_id,
                user_id=user_id,
                device_type=device_type,
                device_name=device_name,
                connected_at=now,
                last_seen=now,
            )
            devices[device_id] = device
        came_online = not device.is_online
        if came_online:
            device.connected_at = now
        device.device_type = device_type or device.device_type
        device.device_name = device_name or device.device_name
        device.last_seen = now
        device.connections.add(connection)
        # Trim only now that this device is online, so it can never be the one
        # trimmed (a wall clock stepping back would make it the "oldest").
        self._trim_offline(devices)
        return came_online

    def _trim_offline(self, devices: dict[str, Device]) -> None:
        # Offline entries are kept for DeviceList, but never more than the limit.
        offline = [d for d in devices.values() if not d.is_online]
        excess = len(devices) - self._max_devices
        for device in sorted(offline, key=lambda d: d.last_seen)[: max(excess, 0)]:
            del devices[device.device_id]

    def leave(self, session_id: str, *, device_id: str, connection: int, now: int) -> bool:
        """Forget a connection; True when its device went offline with it."""
        devices = self._sessions.get(session_id)
        device = devices.get(device_id) if devices else None
        if devices is None or device is None or connection not in device.connections:
            return False
        device.connections.discard(connection)
        device.last_seen = now
        if not any(d.is_online for d in devices.values()):
            del self._sessions[session_id]
        return not device.is_online

    def touch(self, session_id: str, device_id: str, now: int) -> None:
        """Note a sign of life from a device."""
        devices = self._sessions.get(session_id)
        device = devices.get(device_id) if devices else None
        if device is not None:
            device.last_seen = now

    def device(self, session_id: str, device_id: str) -> Device | None:
        """One device of a session, if known."""
        return self._sessions.get(session_id, {}).get(device_id)

    def devices(self, session_id: str) -> list[Device]:
        """The session's known devices, online first, then by connection time."""
        devices = self._sessions.get(session_id, {})
        return sorted(devices.values(), key=lambda d: (not d.is_online, d.connected_at))

    @property
    def session_count(self) -> int:
        """Sessions with at least one device online."""
        return len(self._sessions)


class MemoryPresence:
    """PresenceStore over :class:`Presence`, for one process."""

    publishes = False

    def __init__(self, presence: Presence) -> None:
        self.presence = presence

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
        """See :meth:`Presence.join`."""
        await trio.lowlevel.checkpoint()
        return self.presence.join(
            session_id,
            device_id=device_id,
            user_id=user_id,
            connection=connection,
            device_type=device_type,
            device_name=device_name,
            now=now,
        )

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
        """See :meth:`Presence.leave`."""
        await trio.lowlevel.checkpoint()
        return self.presence.leave(session_id, device_id=device_id, connection=connection, now=now)

    async def devices(self, session_id: str) -> list[dict[str, Any]]:
        """The session's devices, online first."""
        await trio.lowlevel.checkpoint()
        return [d.describe() for d in self.presence.devices(session_id)]

    def touch(self, session_id: str, device_id: str, now: int) -> None:
        """Note a sign of life."""
        self.presence.touch(session_id, device_id, now)

    @property
    def session_count(self) -> int:
        """Sessions with a device online."""
        return self.presence.session_count

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to maintain."""
        task_status.started()
