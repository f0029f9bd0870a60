"""PresenceStore contract (memory and Redis), and Redis presence announcements and expiry."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import trio

from syncbridge.errors import LimitExceeded
from syncbridge.redis.presence import RedisPresence

from .conftest import WAIT, Bench, every_backend, redis_kinds, redis_only, tap_channel

T0 = 1_700_000_000


async def join(
    presence: Any,
    device: str,
    connection: int,
    *,
    now: int = T0,
    session: str = "s1",
    device_type: str | None = "web",
    device_name: str | None = None,
    announce: str = "joined",
) -> bool:
    result: bool = await presence.join(
        session,
        device_id=device,
        user_id=f"user-of-{device}",
        connection=connection,
        device_type=device_type,
        device_name=device_name,
        now=now,
        announce=announce,
    )
    return result


async def leave(
    presence: Any,
    device: str,
    connection: int,
    *,
    now: int = T0,
    session: str = "s1",
    announce: str = "left",
) -> bool:
    result: bool = await presence.leave(
        session,
        device_id=device,
        user_id=f"user-of-{device}",
        connection=connection,
        now=now,
        announce=announce,
    )
    return result


async def online(presence: Any, session: str = "s1") -> list[tuple[str, bool]]:
    return [(d["device_id"], d["is_online"]) for d in await presence.devices(session)]


@every_backend
async def test_presence_device_online_while_any_connection_is(backend: Bench) -> None:
    p = backend.presence
    session = "room{1}"  # braces must not split the presence keys over slots
    assert await join(p, "d1", 1, session=session) is True
    assert await join(p, "d1", 2, now=T0 + 1, session=session) is False  # same device
    assert await join(p, "d2", 3, now=T0 + 2, session=session) is True
    assert await online(p, session) == [("d1", True), ("d2", True)]
    assert await leave(p, "d1", 1, now=T0 + 3, session=session) is False  # still has 2
    assert await online(p, session) == [("d1", True), ("d2", True)]
    assert await leave(p, "d1", 2, now=T0 + 4, session=session) is True  # went offline
    assert await online(p, session) == [("d2", True), ("d1", False)]
    assert await join(p, "d1", 4, now=T0 + 5, session=session) is True  # back online


async def test_presence_leave_of_unknown_connection_is_false(backend: Bench) -> None:
    p = backend.presence
    await join(p, "d1", 1)
    assert await leave(p, "d1", 99) is False
    assert await leave(p, "nobody", 1) is False
    assert await leave(p, "d1", 1, session="elsewhere") is False
    assert await online(p) == [("d1", True)]


async def test_presence_device_limit_refuses_only_new_devices(backend: Bench) -> None:
    p = (await backend.another(max_devices_per_session=2)).presence
    await join(p, "d1", 1)
    await join(p, "d2", 2, now=T0 + 1)
    with pytest.raises(LimitExceeded) as refused:
        await join(p, "d3", 3, now=T0 + 2)
    assert (refused.value.status, refused.value.error_code) == (429, "TOO_MANY_DEVICES")
    assert refused.value.details == {"limit_devices": 2}
    assert await online(p) == [("d1", True), ("d2", True)]  # the refusal left no trace
    # Another connection of an online device is not a new device.
    assert await join(p, "d1", 4, now=T0 + 3) is False
    assert await join(p, "d1", 1, now=T0 + 4) is False  # a refresh neither
    await leave(p, "d2", 2, now=T0 + 5)
    assert await join(p, "d3", 3, now=T0 + 6) is True
    assert [d for d, is_on in await online(p) if is_on] == ["d1", "d3"]


async def test_presence_devices_entries_have_the_v1_shape(backend: Bench) -> None:
    p = backend.presence
    await join(p, "d1", 1, device_type="ios", device_name="Phone")
    await join(p, "d2", 2, now=T0 + 10, device_type=None, device_name=None)
    await leave(p, "d2", 2, now=T0 + 20)
    assert await p.devices("s1") == [
        {
            "device_id": "d1",
            "user_id": "user-of-d1",
            "device_type": "ios",
            "device_name": "Phone",
            "connected_at": T0,
            "last_seen": T0,
            "is_online": True,
        },
        {
            "device_id": "d2",
            "user_id": "user-of-d2",
            "device_type": None,
            "device_name": None,
            "connected_at": T0 + 10,
            "last_seen": T0 + 20,
            "is_online": False,
        },
    ]
    assert await p.devices("nobody-here") == []


async def test_presence_refresh_updates_description_keeps_connected_at(backend: Bench) -> None:
    p = backend.presence
    await join(p, "d1", 1, device_type="web", device_name="Tab")
    assert await join(p, "d1", 1, now=T0 + 30, device_type="ios", device_name="Phone") is False
    [entry] = await p.devices("s1")
    assert (entry["device_type"], entry["device_name"]) == ("ios", "Phone")
    assert entry["connected_at"] == T0
    assert entry["is_online"] is True
    # One connection, joined twice: one leave takes the device offline.
    assert await leave(p, "d1", 1, now=T0 + 40) is True


# ------------------------------------------------------------------------- Redis only


@redis_kinds
async def test_redis_presence_publishes_joined_and_left_frames(backend: Bench) -> None:
    p = backend.presence
    process_id = backend.broker.process_id
    joined = '{"type":10,"payload":{"device_id":"d1"}}'
    left = '{"type":11,"payload":{"device_id":"d1"}}'
    async with tap_channel(backend, "s{1}") as tap:
        await join(p, "d1", 1, session="s{1}", announce=joined)
        header, frame = await tap.next()
        assert (header[:3], frame) == ([process_id, 1, "d1"], joined)
        # Neither a second connection nor the first one leaving is news ...
        await join(p, "d1", 2, session="s{1}", announce="not published")
        await leave(p, "d1", 1, session="s{1}", announce="not published")
        # ... but the device's last connection leaving is.
        await leave(p, "d1", 2, session="s{1}", announce=left)
        header, frame = await tap.next()
        assert (header[:3], frame) == ([process_id, None, None], left)


class FakeClock:
    """Wall-clock seconds that a test moves forward instead of waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def presence_on(bench: Bench, clock: FakeClock) -> RedisPresence:
    """Another RedisPresence on ``bench``'s client and broker, with a fake clock."""
    backend: Any = bench.backend
    return RedisPresence(
        backend.client,
        process_id=backend.broker.process_id,
        header=backend.broker.header,
        publish_command=backend.broker.publish_command,
        announce=backend.broker.publish,
        ttl=1.0,
        max_devices_per_session=8,
        session_ttl=60.0,
        timeout=2.0,
        clock=clock,
    )


@redis_only
async def test_redis_presence_reaps_dead_process_devices_exactly_once(backend: Bench) -> None:
    doomed = await backend.another(presence_ttl=1.0)
    await join(doomed.presence, "dead", 1, announce="joined")
    await join(doomed.presence, "dead", 2, announce="joined")
    await doomed.stop()  # the process is gone: nobody refreshes its members any more

    clock = FakeClock()
    clock.now += 5.0  # well past the dead process's 1 s presence TTL
    reaper_a, reaper_b = presence_on(backend, clock), presence_on(backend, clock)
    assert await join(reaper_a, "alive", 3, announce="joined") is True  # fresh, not reaped
    assert await online(reaper_a) == [("alive", True), ("dead", False)]

    results: list[list[str]] = []

    async def reap(presence: RedisPresence) -> None:
        results.append(await presence.reap("s1"))

    async with tap_channel(backend, "s1") as tap:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reap, reaper_a)
                nursery.start_soon(reap, reaper_b)
        assert sorted(results) == [[], ["dead"]]
        await backend.broker.publish("s1", "sentinel")
        messages = [await tap.next()]
        while messages[-1][1] != "sentinel":
            messages.append(await tap.next())
    [(header, frame), _sentinel] = messages  # DeviceLeft once, then the sentinel
    assert header[:3] == [backend.broker.process_id, None, None]
    left = orjson.loads(frame)
    assert left["type"] == 11
    assert left["payload"] == {
        "device_id": "dead",
        "user_id": "user-of-dead",
        "last_seen": int(clock.now),
    }
    assert (left["session_id"], left["device_id"]) == ("s1", "dead")
    assert await reaper_b.reap("s1") == []  # nothing left to reap
    assert await online(reaper_a) == [("alive", True), ("dead", False)]
