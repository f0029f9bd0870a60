"""Presence: devices per session, several connections per device, limits and trimming."""

from __future__ import annotations

import pytest

from syncbridge.errors import LimitExceeded
from syncbridge.presence import Presence

T0 = 1_700_000_000


def join(
    p: Presence,
    device: str,
    connection: int,
    *,
    now: int = T0,
    session: str = "s1",
    device_type: str | None = None,
    device_name: str | None = None,
) -> bool:
    return p.join(
        session,
        device_id=device,
        user_id="u1",
        connection=connection,
        device_type=device_type,
        device_name=device_name,
        now=now,
    )


def leave(p: Presence, device: str, connection: int, *, now: int = T0, session: str = "s1") -> bool:
    return p.leave(session, device_id=device, connection=connection, now=now)


def ids(p: Presence, session: str = "s1") -> list[tuple[str, bool]]:
    return [(d.device_id, d.is_online) for d in p.devices(session)]


def test_presence_first_join_comes_online() -> None:
    p = Presence(max_devices_per_session=4)
    assert join(p, "d1", 1, device_type="web", device_name="Tab") is True
    device = p.device("s1", "d1")
    assert device is not None
    assert device.describe() == {
        "device_id": "d1",
        "user_id": "u1",
        "device_type": "web",
        "device_name": "Tab",
        "connected_at": T0,
        "last_seen": T0,
        "is_online": True,
    }
    assert p.session_count == 1


def test_presence_second_connection_same_device_not_new() -> None:
    p = Presence(max_devices_per_session=4)
    join(p, "d1", 1, now=T0)
    assert join(p, "d1", 2, now=T0 + 5) is False
    device = p.device("s1", "d1")
    assert device is not None
    assert device.connections == {1, 2}
    assert device.connected_at == T0  # still the same online period
    assert device.last_seen == T0 + 5


def test_presence_device_offline_only_when_last_connection_leaves() -> None:
    p = Presence(max_devices_per_session=4)
    join(p, "d1", 1)
    join(p, "d1", 2)
    join(p, "d2", 3)
    assert leave(p, "d1", 1) is False
    assert ids(p) == [("d1", True), ("d2", True)]
    assert leave(p, "d1", 2, now=T0 + 9) is True
    assert ids(p) == [("d2", True), ("d1", False)]
    device = p.device("s1", "d1")
    assert device is not None
    assert device.last_seen == T0 + 9
    assert device.describe()["is_online"] is False


def test_presence_leave_unknown_is_false_and_harmless() -> None:
    p = Presence(max_devices_per_session=4)
    assert leave(p, "d1", 1) is False
    join(p, "d1", 1)
    assert leave(p, "d1", 99) is False
    assert leave(p, "d9", 1) is False
    assert leave(p, "d1", 1, session="other") is False
    assert ids(p) == [("d1", True)]
    assert leave(p, "d1", 1) is True
    assert leave(p, "d1", 1) is False  # twice: already gone


def test_presence_session_forgotten_when_no_device_online() -> None:
    p = Presence(max_devices_per_session=4)
    join(p, "d1", 1)
    join(p, "d2", 2)
    leave(p, "d1", 1)
    assert p.session_count == 1
    assert leave(p, "d2", 2) is True
    assert p.session_count == 0
    assert p.devices("s1") == []
    assert p.device("s1", "d1") is None


def test_presence_offline_device_comes_back_online() -> None:
    p = Presence(max_devices_per_session=4)
    join(p, "d1", 1, now=T0)
    join(p, "d2", 2, now=T0, device_type="phone", device_name="Pixel")
    leave(p, "d2", 2, now=T0 + 1)
    assert join(p, "d2", 3, now=T0 + 50) is True
    device = p.device("s1", "d2")
    assert device is not None
    assert device.connected_at == T0 + 50
    assert (device.device_type, device.device_name) == ("phone", "Pixel")  # kept when not resent


def test_presence_device_limit_refuses_new_device() -> None:
    p = Presence(max_devices_per_session=2)
    join(p, "d1", 1)
    join(p, "d2", 2)
    with pytest.raises(LimitExceeded) as info:
        join(p, "d3", 3)
    exc = info.value
    assert (exc.status, exc.error_code) == (429, "TOO_MANY_DEVICES")
    assert exc.details == {"limit_devices": 2}
    assert "2" in exc.message
    assert ids(p) == [("d1", True), ("d2", True)]
    assert p.device("s1", "d3") is None


def test_presence_device_limit_allows_more_connections_of_online_device() -> None:
    p = Presence(max_devices_per_session=2)
    join(p, "d1", 1)
    join(p, "d2", 2)
    assert join(p, "d1", 3) is False
    device = p.device("s1", "d1")
    assert device is not None
    assert device.connections == {1, 3}


def test_presence_device_limit_counts_online_devices_only() -> None:
    p = Presence(max_devices_per_session=2)
    join(p, "d1", 1)
    join(p, "d2", 2)
    leave(p, "d2", 2)
    assert join(p, "d3", 3) is True
    with pytest.raises(LimitExceeded):
        join(p, "d2", 4)  # an offline device coming back counts as a new one
    assert ids(p) == [("d1", True), ("d3", True)]


def test_presence_device_limit_is_per_session() -> None:
    p = Presence(max_devices_per_session=1)
    join(p, "d1", 1, session="a")
    assert join(p, "d1", 2, session="b") is True
    with pytest.raises(LimitExceeded):
        join(p, "d2", 3, session="a")
    assert p.session_count == 2


def test_presence_offline_entries_trimmed_oldest_first() -> None:
    p = Presence(max_devices_per_session=3)
    join(p, "keep", 0, now=T0)
    for n, device in enumerate(["old", "mid"], start=1):
        join(p, device, n, now=T0 + n)
        leave(p, device, n, now=T0 + 10 * n)
    join(p, "new1", 5, now=T0 + 30)
    assert ids(p) == [("keep", True), ("new1", True), ("mid", False)]
    join(p, "new2", 6, now=T0 + 31)
    assert ids(p) == [("keep", True), ("new1", True), ("new2", True)]


def test_presence_joining_device_never_trimmed_when_clock_steps_back() -> None:
    p = Presence(max_devices_per_session=2)
    join(p, "d1", 1, now=T0)
    join(p, "d2", 2, now=T0)
    leave(p, "d2", 2, now=T0 + 100)
    assert join(p, "d3", 3, now=T0 + 50) is True  # wall clock went back 50 s
    assert ids(p) == [("d1", True), ("d3", True)]
    assert leave(p, "d3", 3) is True


def test_presence_devices_order_online_first_then_connected_at() -> None:
    p = Presence(max_devices_per_session=10)
    join(p, "late", 1, now=T0 + 30)
    join(p, "early", 2, now=T0 + 10)
    join(p, "gone", 3, now=T0)
    join(p, "mid", 4, now=T0 + 20)
    leave(p, "gone", 3, now=T0 + 40)
    assert ids(p) == [("early", True), ("mid", True), ("late", True), ("gone", False)]


def test_presence_touch_updates_last_seen() -> None:
    p = Presence(max_devices_per_session=4)
    join(p, "d1", 1, now=T0)
    p.touch("s1", "d1", T0 + 42)
    p.touch("s1", "unknown", T0 + 43)  # ignored
    p.touch("nope", "d1", T0 + 44)  # ignored
    device = p.device("s1", "d1")
    assert device is not None
    assert device.last_seen == T0 + 42
    assert p.device("s1", "unknown") is None
