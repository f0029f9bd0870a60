"""SessionState (versions, limits, history) and TokenBucket, fed plain values: no I/O, no clock."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from syncbridge.errors import LimitExceeded
from syncbridge.protocol.messages import Operation
from syncbridge.protocol.session import Change, SessionState, TokenBucket

SET, DELETE = Operation.SET, Operation.DELETE
T0 = 1_700_000_000
BIG = 10**9


def state(history_size: int = 100) -> SessionState:
    return SessionState(session_id="s1", history_size=history_size)


def put(
    s: SessionState,
    key: str,
    value: Any = None,
    op: Operation = SET,
    *,
    now: int = T0,
    max_state_bytes: int = BIG,
    max_keys: int = BIG,
) -> Change:
    return s.apply(key, value, op, now=now, max_state_bytes=max_state_bytes, max_keys=max_keys)


def entry_bytes(key: str, value: Any) -> int:
    return len(key.encode()) + len(orjson.dumps(value))


def test_session_state_new_is_version_zero() -> None:
    s = state()
    snap = s.snapshot()
    assert (snap.session_id, snap.state, snap.version) == ("s1", {}, 0)
    assert snap.created_at is None
    assert snap.updated_at is None
    assert s.changes_since(0) == []


def test_session_state_apply_versions_plus_one_per_change() -> None:
    s = state()
    changes = [put(s, "a", 1), put(s, "b", 2), put(s, "a", 3), put(s, "b", op=DELETE)]
    assert [c.version for c in changes] == [1, 2, 3, 4]
    assert s.version == 4
    assert s.data == {"a": 3}
    assert changes[2] == Change(version=3, key="a", value=3, operation=SET, at=T0)
    assert changes[3] == Change(version=4, key="b", value=None, operation=DELETE, at=T0)


def test_session_state_set_null_is_kept() -> None:
    s = state()
    put(s, "k", None)
    assert s.data == {"k": None}
    assert "k" in s.snapshot().state


def test_session_state_delete_missing_key_still_versioned() -> None:
    s = state()
    change = put(s, "ghost", op=DELETE, now=T0 + 5)
    assert change.version == 1
    assert change.operation is DELETE
    assert s.version == 1
    assert s.data == {}
    assert s.total_bytes == 0
    assert s.created_at == T0 + 5


def test_session_state_created_at_set_once_updated_at_moves() -> None:
    s = state()
    put(s, "a", 1, now=T0)
    put(s, "a", 2, now=T0 + 10)
    put(s, "a", op=DELETE, now=T0 + 20)
    snap = s.snapshot()
    assert snap.created_at == T0
    assert snap.updated_at == T0 + 20
    assert [c.at for c in s.history] == [T0, T0 + 10, T0 + 20]


def test_session_state_snapshot_is_a_copy() -> None:
    s = state()
    put(s, "a", 1)
    snap = s.snapshot()
    put(s, "a", 2)
    put(s, "b", 3)
    decoded = snap.state
    decoded["c"] = 4  # a caller's copy: changes neither the snapshot nor the session
    assert snap.state == {"a": 1}
    assert snap.version == 1
    assert s.data == {"a": 2, "b": 3}


def test_session_state_total_bytes_counts_encoded_entries() -> None:
    s = state()
    put(s, "ключ", {"v": [1, 2.5, "é"]})
    put(s, "b", None)
    assert s.total_bytes == entry_bytes("ключ", {"v": [1, 2.5, "é"]}) + entry_bytes("b", None)


def test_session_state_size_limit_refuses_and_changes_nothing() -> None:
    s = state()
    put(s, "a", "x" * 10, now=T0)
    before = (s.version, dict(s.data), s.total_bytes, s.updated_at, len(s.history))
    limit = s.total_bytes + 5
    with pytest.raises(LimitExceeded) as info:
        put(s, "b", "y" * 10, now=T0 + 1, max_state_bytes=limit)
    exc = info.value
    assert (exc.status, exc.error_code) == (413, "STATE_TOO_LARGE")
    assert exc.details is not None
    assert exc.details["limit_bytes"] == limit
    assert exc.details["would_be_bytes"] > limit
    assert str(limit) in exc.message
    assert (s.version, s.data, s.total_bytes, s.updated_at, len(s.history)) == before


def test_session_state_size_limit_on_overwrite_keeps_old_value() -> None:
    s = state()
    put(s, "a", "small")
    total = s.total_bytes
    with pytest.raises(LimitExceeded):
        put(s, "a", "x" * 100, max_state_bytes=50)
    assert s.data == {"a": "small"}
    assert s.total_bytes == total
    assert s.version == 1


def test_session_state_size_limit_exactly_reached_is_accepted() -> None:
    s = state()
    limit = entry_bytes("a", "xyz")
    put(s, "a", "xyz", max_state_bytes=limit)
    assert s.total_bytes == limit


def test_session_state_key_count_limit_refuses_and_changes_nothing() -> None:
    s = state()
    put(s, "a", 1, max_keys=2)
    put(s, "b", 2, max_keys=2)
    before = (s.version, dict(s.data), s.total_bytes)
    with pytest.raises(LimitExceeded) as info:
        put(s, "c", 3, max_keys=2)
    exc = info.value
    assert exc.error_code == "TOO_MANY_KEYS"
    assert exc.status == 413
    assert exc.details == {"limit_keys": 2}
    assert (s.version, s.data, s.total_bytes) == before


def test_session_state_overwrite_at_key_limit_works() -> None:
    s = state()
    put(s, "a", 1, max_keys=1)
    change = put(s, "a", "longer value", max_keys=1)
    assert change.version == 2
    assert s.data == {"a": "longer value"}
    assert s.total_bytes == entry_bytes("a", "longer value")


def test_session_state_overwrite_within_size_limit_counts_new_size_only() -> None:
    s = state()
    limit = entry_bytes("a", "x" * 30)
    put(s, "a", "x" * 30, max_state_bytes=limit)
    put(s, "a", "y" * 30, max_state_bytes=limit)  # old size is replaced, not added
    assert s.total_bytes == limit
    assert s.data == {"a": "y" * 30}


def test_session_state_delete_frees_bytes_and_key_slot() -> None:
    s = state()
    put(s, "a", "x" * 40, max_keys=1)
    put(s, "a", op=DELETE)
    assert s.total_bytes == 0
    limit = entry_bytes("b", "y" * 40)
    put(s, "b", "y" * 40, max_keys=1, max_state_bytes=limit)
    assert s.data == {"b": "y" * 40}
    assert s.total_bytes == limit


def test_session_state_changes_since_in_range() -> None:
    s = state()
    for i in range(5):
        put(s, f"k{i}", i)
    since = s.changes_since(2)
    assert since is not None
    assert [(c.version, c.key, c.value) for c in since] == [
        (3, "k2", 2),
        (4, "k3", 3),
        (5, "k4", 4),
    ]
    assert s.changes_since(0) == list(s.history)


def test_session_state_changes_since_up_to_date() -> None:
    s = state()
    put(s, "a", 1)
    assert s.changes_since(1) == []


def test_session_state_changes_since_ahead_of_session_needs_snapshot() -> None:
    s = state()
    put(s, "a", 1)
    assert s.changes_since(7) is None


def test_session_state_history_cap_and_beyond_history() -> None:
    s = state(history_size=3)
    for i in range(10):
        put(s, "k", i)
    assert [c.version for c in s.history] == [8, 9, 10]
    assert s.changes_since(6) is None  # 7 is gone
    since = s.changes_since(7)
    assert since is not None
    assert [c.version for c in since] == [8, 9, 10]
    assert s.changes_since(0) is None


def record_size(s: SessionState, version: int) -> int:
    """The stored size of one kept change (what the byte bounds count)."""
    change = next(c for c in s.history if c.version == version)
    return len(
        orjson.dumps(
            {
                "version": change.version,
                "key": change.key,
                "value": change.value,
                "operation": change.operation.value,
                "at": change.at,
                "user_id": change.user_id,
                "device_id": change.device_id,
            }
        )
    )


def test_session_state_history_bounded_in_bytes_drops_oldest() -> None:
    s = SessionState(session_id="s1", history_size=1000, history_max_bytes=1000)
    for i in range(30):
        put(s, "k", "x" * 100 + str(i))
    kept = [c.version for c in s.history]
    assert kept == list(range(31 - len(kept), 31))
    assert s.history_bytes == sum(record_size(s, v) for v in kept) <= 1000
    # One more record would not have fitted: the bound is tight.
    assert s.history_bytes + record_size(s, kept[0]) > 1000


def test_session_state_record_over_history_bytes_empties_history() -> None:
    s = SessionState(session_id="s1", history_size=10, history_max_bytes=50)
    put(s, "k", "x" * 100)
    assert (s.history, s.history_bytes) == ([], 0)
    assert s.changes_since(1) == []
    assert s.changes_since(0) is None


def test_session_state_changes_since_over_budget_needs_snapshot() -> None:
    s = state()
    for i in range(10):
        put(s, "k", "v" * 90 + str(i))
    size = record_size(s, 10)
    assert [c.version for c in s.changes_since(7, max_bytes=3 * size) or []] == [8, 9, 10]
    assert s.changes_since(6, max_bytes=3 * size) is None
    assert s.changes_since(6, max_bytes=None) is not None
    assert s.changes_since(10, max_bytes=0) == []


def test_token_bucket_burst_then_refusal() -> None:
    bucket = TokenBucket(rate=10.0, burst=5)
    assert [bucket.allow(100.0) for _ in range(5)] == [True] * 5
    assert bucket.allow(100.0) is False
    assert bucket.allow(100.0) is False


def test_token_bucket_refills_with_time() -> None:
    # rate 4/s and binary-exact times keep the arithmetic exact
    bucket = TokenBucket(rate=4.0, burst=5)
    for _ in range(5):
        bucket.allow(0.0)
    assert bucket.allow(0.125) is False  # half a token
    assert bucket.allow(0.25) is True  # one whole token since t=0
    assert bucket.allow(0.25) is False
    assert [bucket.allow(0.75) for _ in range(3)] == [True, True, False]


def test_token_bucket_refill_capped_at_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=3)
    bucket.allow(0.0)
    results = [bucket.allow(1000.0) for _ in range(4)]
    assert results == [True, True, True, False]
