"""The Store contract, identical for the memory store, Redis and a Redis Cluster."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from syncbridge.errors import LimitExceeded, StoreUnavailable
from syncbridge.protocol.messages import Operation
from syncbridge.store.base import Origin
from syncbridge.store.memory import MemoryStore

from .conftest import WAIT, Bench, every_backend, redis_only

SET, DELETE = Operation.SET, Operation.DELETE
ORIGIN = Origin(user_id="u1", device_id="d1", connection=7)

VALUES: dict[str, Any] = {
    "nested": {"a": {"b": {"c": [1, {"d": None}]}}, "e": {}, "f": []},
    "mixed": [1, "two", 3.5, True, False, None, {"six": [6]}, [], [[]]],
    "float": 0.1 + 0.2,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "negative": -1.5e-7,
    "whole_float": 2.0,
    "int64": 2**63 - 1,
    "min_int64": -(2**63),
    "true": True,
    "false": False,
    "null": None,
    "empty_string": "",
    "long": "x" * 50_000,
    "long_unicode": "日本🎉" * 10_000,
    "escapes": 'quote " backslash \\ slash / nul \u0000 bell \u0007',
    "unicode": "héllo ✓ 日本 🎉",
    "ключ 🔑": "unicode key",
    "a.b.c": "dots",
    "a:b:c": "colons",
    "{tag}": "braces",
    "{}": "empty braces",
    "}{": "reversed braces",
    "session:{x}:meta": "looks like one of our keys",
    "100%": "percent",
    "%7B": "an escaped brace",
    "": "empty key",
    "line\nbreak\ttab": 0,
}


def exact(value: Any) -> bytes:
    """A canonical encoding: equal only if equal with JSON types (True is not 1)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


async def test_store_unknown_session_is_empty(backend: Bench) -> None:
    snap = await backend.store.snapshot("never-written")
    assert (snap.session_id, snap.state, snap.version) == ("never-written", {}, 0)
    assert snap.created_at is None
    assert snap.updated_at is None
    assert await backend.store.changes_since("never-written", 0) == []


async def test_store_set_and_delete_bump_version_by_one(backend: Bench) -> None:
    store = backend.store
    first = await store.apply("s", "a", 1, SET)
    second = await store.apply("s", "b", {"x": 2}, SET)
    third = await store.apply("s", "a", None, DELETE)
    fourth = await store.apply("s", "missing", None, DELETE)
    assert [c.version for c in (first, second, third, fourth)] == [1, 2, 3, 4]
    assert (third.key, third.value, third.operation) == ("a", None, DELETE)
    snap = await store.snapshot("s")
    assert snap.version == 4
    assert snap.state == {"b": {"x": 2}}
    assert snap.created_at is not None
    assert snap.updated_at is not None
    assert snap.created_at <= snap.updated_at


@every_backend
async def test_store_values_of_every_json_kind_round_trip_exactly(backend: Bench) -> None:
    store = backend.store
    for key, value in VALUES.items():
        change = await store.apply("kinds", key, value, SET, ORIGIN)
        assert exact(change.value) == exact(value)
    snap = await store.snapshot("kinds")
    assert snap.version == len(VALUES)
    assert exact(snap.state) == exact(VALUES)
    changes = await store.changes_since("kinds", 0)
    assert changes is not None
    assert [c.key for c in changes] == list(VALUES)
    assert all(exact(c.value) == exact(VALUES[c.key]) for c in changes)


async def test_store_state_too_large_raises_and_changes_nothing(backend: Bench) -> None:
    bench = await backend.another(max_state_bytes=100)
    store = bench.store
    with pytest.raises(LimitExceeded) as first:
        await store.apply("big", "k", "x" * 200, SET)
    assert (first.value.status, first.value.error_code) == (413, "STATE_TOO_LARGE")
    empty = await store.snapshot("big")
    assert (empty.version, empty.state, empty.created_at) == (0, {}, None)

    await store.apply("big", "k", "x" * 50, SET)
    before = await store.snapshot("big")
    with pytest.raises(LimitExceeded) as grown:
        await store.apply("big", "other", "y" * 60, SET)
    assert grown.value.error_code == "STATE_TOO_LARGE"
    assert grown.value.details == {"limit_bytes": 100, "would_be_bytes": 1 + 52 + 5 + 62}
    after = await store.snapshot("big")
    assert (after.version, after.state) == (before.version, before.state) == (1, {"k": "x" * 50})
    # No history record for the refused write. (Replaying version 1 itself would
    # be over the 100-byte replay budget, which is MAX_STATE_BYTES: a snapshot.)
    assert await store.changes_since("big", 1) == []
    assert await store.changes_since("big", 0) is None


async def test_store_too_many_keys_raises_and_changes_nothing(backend: Bench) -> None:
    bench = await backend.another(max_keys=2)
    store = bench.store
    await store.apply("keys", "a", 1, SET)
    await store.apply("keys", "b", 2, SET)
    with pytest.raises(LimitExceeded) as refused:
        await store.apply("keys", "c", 3, SET)
    assert (refused.value.status, refused.value.error_code) == (413, "TOO_MANY_KEYS")
    assert refused.value.details == {"limit_keys": 2}
    snap = await store.snapshot("keys")
    assert (snap.version, snap.state) == (2, {"a": 1, "b": 2})
    # Overwriting an existing key and deleting one are still fine at the limit.
    assert (await store.apply("keys", "a", 10, SET)).version == 3
    await store.apply("keys", "b", None, DELETE)
    assert (await store.apply("keys", "c", 3, SET)).version == 5


@redis_only
async def test_store_byte_accounting_matches_memory(backend: Bench) -> None:
    limit = 120
    redis_store = (await backend.another(max_state_bytes=limit)).store
    memory_store = MemoryStore(session_ttl=60, history_size=100, max_state_bytes=limit, max_keys=50)
    ops: list[tuple[str, Any, Operation]] = [
        ("ключ", "日本語", SET),  # multi-byte key and value: bytes, not characters
        ("a", "x" * 40, SET),
        ("b", {"n": [1, 2.5, None]}, SET),
        ("c", "🎉" * 10, SET),  # 42 more bytes: over the limit
        ("a", "x" * 10, SET),  # shrink an existing key
        ("c", "🎉" * 10, SET),  # now it fits
        ("d", True, SET),
        ("b", None, DELETE),  # frees its bytes
        ("e", "é" * 15, SET),
        ("f", "z" * 30, SET),
        ("ключ", None, DELETE),
        ("f", "z" * 30, SET),
    ]

    async def run(store: Any) -> list[Any]:
        outcomes: list[Any] = []
        for key, value, op in ops:
            try:
                change = await store.apply("bytes", key, value, op)
            except LimitExceeded as exc:
                outcomes.append((exc.error_code, exc.details))
            else:
                outcomes.append(change.version)
        return outcomes

    on_memory = await run(memory_store)
    on_redis = await run(redis_store)
    assert on_redis == on_memory
    refusals = [o for o in on_memory if not isinstance(o, int)]
    assert len(refusals) >= 2  # the sequence really exercises the limit
    assert (await redis_store.snapshot("bytes")).state == (
        await memory_store.snapshot("bytes")
    ).state


async def test_store_changes_since_current_version_is_empty(backend: Bench) -> None:
    store = backend.store
    await store.apply("cs", "a", 1, SET)
    await store.apply("cs", "b", 2, SET)
    assert await store.changes_since("cs", 2) == []


async def test_store_changes_since_lists_the_range_with_origin(backend: Bench) -> None:
    store = backend.store
    await store.apply("cs", "a", 1, SET, ORIGIN)
    await store.apply("cs", "b", [2], SET, Origin("u2", "d2", 9))
    await store.apply("cs", "a", None, DELETE, ORIGIN)
    await store.apply("cs", "c", "anon", SET)
    changes = await store.changes_since("cs", 1)
    assert changes is not None
    assert [(c.version, c.key, c.value, c.operation) for c in changes] == [
        (2, "b", [2], SET),
        (3, "a", None, DELETE),
        (4, "c", "anon", SET),
    ]
    assert [(c.user_id, c.device_id) for c in changes] == [
        ("u2", "d2"),
        ("u1", "d1"),
        (None, None),
    ]
    first = await store.changes_since("cs", 0)
    assert first is not None
    assert [c.version for c in first] == [1, 2, 3, 4]
    assert first[0].describe() == {
        "key": "a",
        "value": 1,
        "operation": "SET",
        "version": 1,
        "user_id": "u1",
        "device_id": "d1",
    }


async def test_store_changes_since_beyond_history_is_none(backend: Bench) -> None:
    store = (await backend.another(history_size=3)).store
    for i in range(6):
        await store.apply("short", f"k{i}", i, SET)
    assert await store.changes_since("short", 2) is None  # version 3 is forgotten
    kept = await store.changes_since("short", 3)
    assert kept is not None
    assert [c.version for c in kept] == [4, 5, 6]


async def test_store_changes_since_ahead_of_session_is_none(backend: Bench) -> None:
    store = backend.store
    await store.apply("ahead", "a", 1, SET)
    assert await store.changes_since("ahead", 2) is None
    assert await store.changes_since("never-written", 5) is None


@every_backend
async def test_store_concurrent_applies_get_consecutive_versions(backend: Bench) -> None:
    store = backend.store
    returned: dict[str, int] = {}

    async def writer(task: int) -> None:
        for i in range(10):
            key = f"t{task}.{i}"
            returned[key] = (await store.apply("busy", key, [task, i], SET, ORIGIN)).version

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for task in range(20):
                nursery.start_soon(writer, task)
    assert sorted(returned.values()) == list(range(1, 201))
    snap = await store.snapshot("busy")
    assert snap.version == 200
    assert snap.state == {f"t{t}.{i}": [t, i] for t in range(20) for i in range(10)}
    changes = await store.changes_since("busy", 0)
    assert changes is not None
    assert [c.version for c in changes] == list(range(1, 201))
    assert all(returned[c.key] == c.version for c in changes)


@every_backend
async def test_store_session_ids_with_braces_stay_separate(backend: Bench) -> None:
    # Braces would split a session's keys over cluster slots (CROSSSLOT) if they
    # reached the hash tag; an escaped id must not collide with a literal one.
    ids = ["a{b}c", "{b}", "a%7Bb%7Dc", "}{", "{}", "{", "%", "%25", "x:{y}:z"]
    try:
        for n, session_id in enumerate(ids):
            await backend.store.apply(session_id, "who", session_id, SET)
            await backend.store.apply(session_id, "n", n, SET)
        snapshots = [await backend.store.snapshot(s) for s in ids]
        histories = [await backend.store.changes_since(s, 0) for s in ids]
    except StoreUnavailable as exc:  # CROSSSLOT and friends surface as this
        pytest.fail(f"session id with braces broke the store: {exc.message}")
    assert [s.state for s in snapshots] == [{"who": s, "n": n} for n, s in enumerate(ids)]
    assert [s.version for s in snapshots] == [2] * len(ids)
    assert [[c.value for c in h or []] for h in histories] == [[s, n] for n, s in enumerate(ids)]


# --- history bounded in bytes, replay bounded by a budget (issue 12, items 2 and 3) -------


async def reachable(store: Any, session_id: str, version: int) -> int:
    """The oldest version a client can resume from with changes (not a snapshot)."""
    for since in range(version + 1):
        if await store.changes_since(session_id, since) is not None:
            return since
    raise AssertionError("not even the current version is reachable")


async def test_store_history_is_bounded_in_bytes(backend: Bench) -> None:
    # Count alone kept every one of 1000 half-megabyte values (issue 12): the
    # bytes bound drops the oldest records as soon as the sum exceeds it.
    bench = await backend.another(history_max_bytes=10_000, max_state_bytes=10**7)
    store = bench.store
    value = "v" * 1000
    for _ in range(50):
        change = await store.apply("hb", "k", value, SET, ORIGIN)
    oldest = await reachable(store, "hb", change.version)
    kept = await store.changes_since("hb", oldest)
    assert kept is not None
    # Each record is a little over 1 000 bytes: at most 9 fit in 10 000.
    assert 8 <= len(kept) <= 9
    assert sum(len(exact(c.describe())) for c in kept) <= 10_000
    assert [c.version for c in kept] == list(range(51 - len(kept), 51))
    # The count bound still applies on its own.
    short = await backend.another(history_size=3, history_max_bytes=10**7)
    for i in range(5):
        await short.store.apply("hc", "k", i, SET)
    assert await reachable(short.store, "hc", 5) == 2


async def test_store_record_larger_than_history_bytes_keeps_no_history(backend: Bench) -> None:
    bench = await backend.another(history_max_bytes=500, max_state_bytes=10**7)
    await bench.store.apply("big", "k", "x" * 1000, SET)
    assert await bench.store.changes_since("big", 1) == []
    assert await bench.store.changes_since("big", 0) is None  # must take the snapshot
    await bench.store.apply("big", "k", 1, SET)
    assert [c.value for c in await bench.store.changes_since("big", 1) or []] == [1]


async def test_store_replay_over_budget_is_a_snapshot(backend: Bench) -> None:
    # MAX_STATE_BYTES is the replay budget: a replay larger than a snapshot may
    # be is answered with the snapshot, decided before the records are read.
    bench = await backend.another(max_state_bytes=3_000, history_max_bytes=10**7)
    store = bench.store
    for i in range(20):
        await store.apply("rb", "k", f"{i:03d}" + "x" * 497, SET, ORIGIN)
    near = await store.changes_since("rb", 16)  # 4 records of ~600 bytes
    assert [c.version for c in near or []] == [17, 18, 19, 20]
    assert await store.changes_since("rb", 10) is None  # 10 records: over 3 000 bytes
    assert await store.changes_since("rb", 0) is None
    assert await store.changes_since("rb", 20) == []
