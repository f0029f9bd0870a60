"""Batched applies on Redis: one pipeline for what arrives together, nothing else changed.

Many writers at once (as under load): every apply still gets its own reply, only
after Redis ran it (the change is readable at once); each session's versions stay
gap-free and each writer sees its own versions strictly increase; and the
updates did go out in pipelines (fewer round trips than updates).
"""

from __future__ import annotations

import trio

from syncbridge.protocol.messages import Operation
from syncbridge.redis.batch import ScriptBatcher

from .conftest import WAIT, Bench

SESSIONS = 20
WRITERS = 3  # per session, concurrently
UPDATES = 30  # per writer


async def test_redis_batched_applies_keep_order_and_ack_after_durable(redis_bench: Bench) -> None:
    store = redis_bench.store
    batcher = store._batcher
    assert batcher is not None
    before = (batcher.batches, batcher.calls)
    seen: dict[str, list[int]] = {}

    async def writer(session: str, name: str) -> None:
        mine = seen.setdefault(f"{session}/{name}", [])
        for n in range(UPDATES):
            change = await store.apply(session, name, n, Operation.SET)
            mine.append(change.version)
            # Acknowledged means stored: the change is in the history already.
            replay = await store.changes_since(session, change.version - 1)
            assert replay is not None
            assert (replay[0].version, replay[0].key, replay[0].value) == (
                change.version,
                name,
                n,
            )

    with trio.fail_after(WAIT * 3):
        async with trio.open_nursery() as nursery:
            for s in range(SESSIONS):
                for w in range(WRITERS):
                    nursery.start_soon(writer, f"batch-{s}", f"w{w}")
    for versions in seen.values():
        assert versions == sorted(versions)
        assert len(set(versions)) == UPDATES
    for s in range(SESSIONS):
        session = f"batch-{s}"
        every = sorted(v for key, vs in seen.items() if key.startswith(session + "/") for v in vs)
        assert every == list(range(1, WRITERS * UPDATES + 1))  # gap-free, none twice
        snap = await store.snapshot(session)
        assert snap.version == WRITERS * UPDATES
        assert snap.state == {f"w{w}": UPDATES - 1 for w in range(WRITERS)}
    batches, calls = batcher.batches - before[0], batcher.calls - before[1]
    assert calls == SESSIONS * WRITERS * UPDATES
    assert batches < calls / 2  # they went out together, not one round trip each


async def test_redis_batched_call_cancelled_before_sending_is_taken_back(
    redis_bench: Bench,
) -> None:
    # A batcher whose sender is not running: every call waits in the queue.
    batcher = ScriptBatcher(redis_bench.store._client, "return 1", what="test", timeout=WAIT)
    with trio.move_on_after(0.05) as scope:
        await batcher.call(["k"], [])
    assert scope.cancelled_caught
    assert batcher._pending == []  # taken back: it will never be sent
    # Once sent, a call cannot be taken back; it runs (its caller resyncs by version).
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        with trio.fail_after(WAIT):
            assert await batcher.call(["k"], []) == 1
        nursery.cancel_scope.cancel()
