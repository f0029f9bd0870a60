"""Store contract for optimistic concurrency and multi-key writes (memory, Redis, cluster)."""

from __future__ import annotations

import time

import orjson
import pytest
import trio

from syncbridge.errors import LimitExceeded, VersionConflict
from syncbridge.protocol.messages import Operation
from syncbridge.protocol.session import Edit
from syncbridge.store.base import Origin

from .conftest import Bench, redis_kinds, tap_channel

SET, DELETE = Operation.SET, Operation.DELETE
HTTP = Origin(user_id="svc", device_id="backend", connection=None)
ORIGIN_WS = Origin(user_id="u1", device_id="d1", connection=3)


async def test_store_apply_with_base_version_conflicts_and_changes_nothing(
    backend: Bench,
) -> None:
    store = backend.store
    await store.apply("s", "a", 1, SET)
    with pytest.raises(VersionConflict) as conflict:
        await store.apply("s", "a", 2, SET, base_version=0)
    assert (conflict.value.status, conflict.value.error_code) == (409, "VERSION_CONFLICT")
    assert conflict.value.details == {"current_version": 1, "base_version": 0}
    snap = await store.snapshot("s")
    assert (snap.version, snap.state) == (1, {"a": 1})
    assert (await store.apply("s", "a", 3, SET, base_version=1)).version == 2


async def test_store_apply_many_is_one_version(backend: Bench) -> None:
    store = backend.store
    await store.apply("m", "gone", 0, SET)
    await store.apply("m", "kept", "k", SET)
    edits = (Edit.delete("gone"), Edit.set("new", {"x": [1]}), Edit.set("kept", "k2"))
    commit = await store.apply_many("m", edits, HTTP)
    assert commit.version == 3
    snap = await store.snapshot("m")
    assert (snap.version, snap.state) == (3, {"kept": "k2", "new": {"x": [1]}})
    assert (snap.updated_by_user, snap.updated_by_device) == ("svc", "backend")
    changes = await store.changes_since("m", 2)
    assert changes is not None
    assert [(c.version, c.key, c.operation, c.value) for c in changes] == [
        (3, "gone", DELETE, None),
        (3, "new", SET, {"x": [1]}),
        (3, "kept", SET, "k2"),
    ]
    assert {(c.user_id, c.device_id) for c in changes} == {("svc", "backend")}
    # Versions after a multi-key write stay consecutive and resumable.
    await store.apply("m", "after", 1, SET)
    again = await store.changes_since("m", 1)
    assert again is not None
    assert [c.version for c in again] == [2, 3, 3, 3, 4]


async def test_store_apply_many_base_version_conflict_changes_nothing(backend: Bench) -> None:
    store = backend.store
    with pytest.raises(VersionConflict) as conflict:
        await store.apply_many("c", (Edit.set("a", 1),), HTTP, base_version=3)
    assert conflict.value.current_version == 0
    await store.apply_many("c", (Edit.set("a", 1),), HTTP, base_version=0)
    with pytest.raises(VersionConflict):
        await store.apply_many("c", (Edit.set("a", 2),), HTTP, base_version=0)
    snap = await store.snapshot("c")
    assert (snap.version, snap.state) == (1, {"a": 1})


async def test_store_apply_many_limits_are_all_or_nothing(backend: Bench) -> None:
    store = (await backend.another(max_state_bytes=100, max_keys=2)).store
    await store.apply("l", "a", 1, SET)
    with pytest.raises(LimitExceeded) as keys:
        await store.apply_many("l", (Edit.set("b", 2), Edit.set("c", 3)), HTTP)
    assert keys.value.error_code == "TOO_MANY_KEYS"
    with pytest.raises(LimitExceeded) as size:
        await store.apply_many("l", (Edit.set("b", "x" * 60), Edit.set("a", "y" * 40)), HTTP)
    assert size.value.error_code == "STATE_TOO_LARGE"
    snap = await store.snapshot("l")
    assert (snap.version, snap.state) == (1, {"a": 1})
    # Replacing keys at the key limit is fine: the result holds no more keys.
    await store.apply("l", "b", 2, SET)
    commit = await store.apply_many("l", (Edit.delete("a"), Edit.set("c", 3)), HTTP)
    assert commit.version == 3
    assert (await store.snapshot("l")).state == {"b": 2, "c": 3}


async def test_store_concurrent_single_and_multi_writes_keep_one_sequence(
    backend: Bench,
) -> None:
    store = backend.store
    versions: list[int] = []

    async def single(i: int) -> None:
        versions.append((await store.apply("seq", f"k{i}", i, SET)).version)

    async def multi(i: int) -> None:
        edits = (Edit.set(f"m{i}", i), Edit.set(f"n{i}", i))
        versions.append((await store.apply_many("seq", edits, HTTP)).version)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(single, i)
            nursery.start_soon(multi, i)
    assert sorted(versions) == list(range(1, 41))
    changes = await store.changes_since("seq", 0)
    assert changes is not None
    assert sorted({c.version for c in changes}) == list(range(1, 41))


@redis_kinds
async def test_store_apply_many_publishes_one_update_per_key(backend: Bench) -> None:
    # The memory store does not publish: the StateWriter fans out (tested end to end).
    async with tap_channel(backend, "pub") as tap:
        await backend.store.apply_many("pub", (Edit.set("a", 1), Edit.set("b", [2])), HTTP)
        messages = [await tap.next() for _ in range(2)]
    frames = [orjson.loads(frame) for _header, frame in messages]
    assert [f["payload"] for f in frames] == [
        {"key": "a", "value": 1, "operation": "SET", "version": 1},
        {"key": "b", "value": [2], "operation": "SET", "version": 1},
    ]
    assert {(f["type"], f["session_id"], f["user_id"], f["device_id"]) for f in frames} == {
        (5, "pub", "svc", "backend")
    }
    # An HTTP write excludes no connection and no device from the fan-out.
    assert all(header[1] is None and header[2] is None for header, _frame in messages)


async def test_store_restore_points_are_bounded_newest_first(backend: Bench) -> None:
    store = backend.store
    await store.apply("rp", "a", 1, SET, ORIGIN_WS)
    first = await store.save_restore_point("rp", point_id="p1", label="one", origin=HTTP, keep=2)
    await store.apply_many("rp", (Edit.set("b", {"x": 'ü/"q'}),), HTTP)
    await store.save_restore_point("rp", point_id="p2", label="two", origin=HTTP, keep=2)
    await store.save_restore_point("rp", point_id="p3", label="", origin=HTTP, keep=2)
    assert (first.id, first.version, first.label) == ("p1", 1, "one")
    assert (first.created_by_user, first.created_by_device) == ("svc", "backend")
    listed = await store.restore_points("rp")
    assert [(p.id, p.version, p.label) for p in listed] == [("p3", 2, ""), ("p2", 2, "two")]
    assert await store.restore_point("rp", "p1") is None  # dropped beyond keep
    found = await store.restore_point("rp", "p2")
    assert found is not None
    assert found[0] == listed[1]
    assert orjson.loads(found[1]) == {"a": 1, "b": {"x": 'ü/"q'}}
    assert await store.restore_point("other", "p2") is None
    assert await store.restore_points("never") == []


async def test_store_delete_session_removes_state_history_and_points(backend: Bench) -> None:
    store = backend.store
    await store.apply("del", "a", 1, SET)
    await store.save_restore_point("del", point_id="p", label="l", origin=HTTP, keep=5)
    assert await store.delete_session("del") == 1
    snap = await store.snapshot("del")
    assert (snap.version, snap.state) == (0, {})
    assert await store.restore_points("del") == []
    assert await store.changes_since("del", 1) is None
    assert await store.delete_session("del") == 0
    assert (await store.apply("del", "b", 2, SET)).version == 1


async def test_store_revocations_by_token_and_by_device(backend: Bench) -> None:
    store = backend.store
    now = int(time.time())

    async def revoked(token_id: str | None, device: str, issued_at: int | None) -> bool:
        return bool(
            await store.is_revoked(
                token_id=token_id, session_id="s", device_id=device, issued_at=issued_at
            )
        )

    assert not await revoked("j1", "d1", now)
    await store.revoke(until=now + 60, token_id="j1")
    await store.revoke(until=now + 60, session_id="s", device_id="d2", issued_before=now - 5)
    await store.revoke(until=now - 1, token_id="expired")
    assert await revoked("j1", "d1", now)
    assert not await revoked("j2", "d1", now)
    assert await revoked(None, "d2", now - 5)  # issued at or before: refused
    assert await revoked("j3", "d2", None)  # no iat: cannot prove it is newer
    assert not await revoked("j3", "d2", now - 4)  # issued after the revocation
    assert not await revoked("expired", "d3", now)
