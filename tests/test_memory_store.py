"""MemoryStore: round trips of every JSON kind, history, TTL expiry on a fake clock, limits."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from syncbridge.errors import LimitExceeded
from syncbridge.protocol.messages import Operation
from syncbridge.store.memory import MemoryStore

SET, DELETE = Operation.SET, Operation.DELETE
EPOCH = 1_700_000_000.0
TTL = 3600.0


def make_store(**overrides: Any) -> MemoryStore:
    """A store whose wall clock is trio's (mock) clock shifted to a realistic epoch."""
    options: dict[str, Any] = {
        "session_ttl": TTL,
        "history_size": 100,
        "max_state_bytes": 1_000_000,
        "max_keys": 1000,
        "clock": lambda: EPOCH + trio.current_time(),
    }
    options.update(overrides)
    return MemoryStore(**options)


VALUES: dict[str, Any] = {
    "nested": {"a": {"b": {"c": [1, {"d": None}]}}, "e": {}},
    "mixed": [1, "two", 3.5, True, None, {"six": [6]}, []],
    "float": 0.1 + 0.2,
    "negative": -1.5e-7,
    "big_int": 2**53,
    "true": True,
    "false": False,
    "null": None,
    "empty_string": "",
    "long": "x" * 50_000,
    "unicode": "héllo ✓ 日本 🎉",
    "a.b.c": "dots",
    "a/b\\c": "slashes",
    "  ": "spaces only",
    "ключ": "unicode key",
    '{"json": "key"}': "json-looking key",
    "line\nbreak\ttab": 0,
}


async def test_memory_store_unknown_session_is_empty() -> None:
    store = make_store()
    snap = await store.snapshot("never")
    assert (snap.session_id, snap.state, snap.version) == ("never", {}, 0)
    assert snap.created_at is None
    assert snap.updated_at is None
    assert await store.changes_since("never", 0) == []
    assert await store.changes_since("never", 3) is None
    assert store.session_count == 0
    assert store.name == "memory"
    assert await store.ping() == 0.0


async def test_memory_store_round_trip_every_json_kind() -> None:
    store = make_store()
    for key, value in VALUES.items():
        await store.apply("s1", key, value, SET)
    snap = await store.snapshot("s1")
    assert snap.state == VALUES
    assert snap.version == len(VALUES)
    for key, value in VALUES.items():
        assert type(snap.state[key]) is type(value)
    assert snap.state["long"] == "x" * 50_000
    assert snap.state["float"] == 0.30000000000000004


async def test_memory_store_snapshot_not_altered_by_later_writes() -> None:
    store = make_store()
    await store.apply("s1", "k", 1, SET)
    snap = await store.snapshot("s1")
    await store.apply("s1", "k", 2, SET)
    assert snap.state == {"k": 1}
    assert (await store.snapshot("s1")).state == {"k": 2}


async def test_memory_store_apply_versions_and_delete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = make_store()
    first = await store.apply("s1", "a", 1, SET)
    autojump_clock.jump(10)
    second = await store.apply("s1", "a", None, DELETE)
    third = await store.apply("s1", "missing", None, DELETE)
    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert second.operation is DELETE
    snap = await store.snapshot("s1")
    assert snap.state == {}
    assert snap.version == 3
    assert snap.created_at == int(EPOCH)
    assert snap.updated_at == int(EPOCH) + 10


async def test_memory_store_sessions_are_independent() -> None:
    store = make_store()
    await store.apply("s1", "k", "one", SET)
    await store.apply("s2", "k", "two", SET)
    await store.apply("s2", "k2", "two", SET)
    assert (await store.snapshot("s1")).state == {"k": "one"}
    assert (await store.snapshot("s1")).version == 1
    assert (await store.snapshot("s2")).version == 2
    assert store.session_count == 2


async def test_memory_store_changes_since() -> None:
    store = make_store(history_size=3)
    for i in range(5):
        await store.apply("s1", f"k{i}", i, SET)
    since = await store.changes_since("s1", 3)
    assert since is not None
    assert [(c.version, c.key, c.value) for c in since] == [(4, "k3", 3), (5, "k4", 4)]
    assert await store.changes_since("s1", 5) == []
    assert await store.changes_since("s1", 1) is None  # history holds 3..5 only
    assert await store.changes_since("s1", 9) is None  # client ahead: needs a snapshot


async def test_memory_store_ttl_expiry(autojump_clock: trio.testing.MockClock) -> None:
    store = make_store()
    await store.apply("s1", "k", "v", SET)
    autojump_clock.jump(TTL - 1)
    assert (await store.snapshot("s1")).version == 1
    autojump_clock.jump(1)
    snap = await store.snapshot("s1")
    assert (snap.state, snap.version, snap.created_at) == ({}, 0, None)
    assert store.session_count == 0
    assert await store.changes_since("s1", 1) is None


async def test_memory_store_write_refreshes_ttl(autojump_clock: trio.testing.MockClock) -> None:
    store = make_store()
    await store.apply("s1", "k", 1, SET)
    autojump_clock.jump(TTL - 10)
    await store.apply("s1", "k", 2, SET)
    autojump_clock.jump(TTL - 10)
    snap = await store.snapshot("s1")
    assert snap.state == {"k": 2}
    assert snap.version == 2


async def test_memory_store_expired_session_starts_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = make_store()
    await store.apply("s1", "old", 1, SET)
    await store.apply("s1", "old", 2, SET)
    autojump_clock.jump(TTL)
    change = await store.apply("s1", "new", 3, SET)
    assert change.version == 1
    snap = await store.snapshot("s1")
    assert snap.state == {"new": 3}
    assert snap.created_at == int(EPOCH + TTL)


async def test_memory_store_sweep_drops_only_expired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = make_store()
    await store.apply("old", "k", 1, SET)
    autojump_clock.jump(TTL / 2)
    await store.apply("young", "k", 1, SET)
    assert store.sweep() == 0
    autojump_clock.jump(TTL / 2)
    assert store.sweep() == 1
    assert store.session_count == 1
    assert (await store.snapshot("young")).version == 1
    assert (await store.snapshot("old")).version == 0


async def test_memory_store_run_sweeps_periodically(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = make_store(sweep_interval=60.0)
    await store.apply("s1", "k", 1, SET)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        autojump_clock.jump(TTL + 60)
        await trio.testing.wait_all_tasks_blocked()
        assert store.session_count == 0  # swept without anyone reading it
        nursery.cancel_scope.cancel()


async def test_memory_store_size_limit_propagates_and_changes_nothing() -> None:
    store = make_store(max_state_bytes=100)
    await store.apply("s1", "k", "small", SET)
    with pytest.raises(LimitExceeded) as info:
        await store.apply("s1", "big", "x" * 200, SET)
    assert (info.value.status, info.value.error_code) == (413, "STATE_TOO_LARGE")
    snap = await store.snapshot("s1")
    assert (snap.state, snap.version) == ({"k": "small"}, 1)


async def test_memory_store_key_limit_propagates() -> None:
    store = make_store(max_keys=2)
    await store.apply("s1", "a", 1, SET)
    await store.apply("s1", "b", 2, SET)
    with pytest.raises(LimitExceeded) as info:
        await store.apply("s1", "c", 3, SET)
    assert info.value.error_code == "TOO_MANY_KEYS"
    await store.apply("s1", "a", 10, SET)  # overwriting stays allowed
    assert (await store.snapshot("s1")).state == {"a": 10, "b": 2}


async def test_memory_store_refused_first_write_leaves_no_session() -> None:
    store = make_store(max_state_bytes=10)
    with pytest.raises(LimitExceeded):
        await store.apply("s1", "big", "x" * 50, SET)
    assert store.session_count == 0
    snap = await store.snapshot("s1")
    assert (snap.state, snap.version) == ({}, 0)
    assert await store.changes_since("s1", 0) == []
    assert store.sweep() == 0
    assert (await store.apply("s1", "k", 1, SET)).version == 1
