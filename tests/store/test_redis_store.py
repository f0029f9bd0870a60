"""RedisStore as an operator sees it: key layout, TTLs, history cap, publish, outages, OOM."""

from __future__ import annotations

import orjson
import pytest
import trio

from syncbridge.errors import LimitExceeded, StoreUnavailable
from syncbridge.protocol.codec import encode
from syncbridge.protocol.messages import MessageType, Operation
from syncbridge.store.base import Origin

from .conftest import WAIT, Bench, tap_channel

SET, DELETE = Operation.SET, Operation.DELETE
ORIGIN = Origin(user_id="u1", device_id="d1", connection=7)
TTL_MS = 100_000  # redis_bench runs with session_ttl=100
TIMEOUT = 0.5  # and store_timeout=0.5


async def cli_lines(bench: Bench, *args: str) -> list[str]:
    assert bench.redis is not None
    return (await bench.redis.cli(*args)).splitlines()


async def test_redis_store_layout_is_readable_with_redis_cli(redis_bench: Bench) -> None:
    store = redis_bench.store
    await store.apply("room-1", "title", "Plan", SET, ORIGIN)
    await store.apply("room-1", "cursor", {"x": 1, "y": [2, 3.5]}, SET, ORIGIN)
    await store.apply("room-1", "flag", True, SET)
    await store.apply("room-1", "flag", None, DELETE)

    keys = sorted(await cli_lines(redis_bench, "KEYS", "session:*"))
    assert keys == ["session:{room-1}", "session:{room-1}:history", "session:{room-1}:meta"]
    flat = await cli_lines(redis_bench, "HGETALL", "session:{room-1}")
    state = dict(zip(flat[::2], flat[1::2], strict=True))
    assert state == {"title": '"Plan"', "cursor": '{"x":1,"y":[2,3.5]}'}
    flat = await cli_lines(redis_bench, "HGETALL", "session:{room-1}:meta")
    meta = dict(zip(flat[::2], flat[1::2], strict=True))
    assert set(meta) == {
        "version",
        "created_at",
        "updated_at",
        "updated_user",
        "updated_device",
        "bytes",
        "history_bytes",
    }
    assert meta["version"] == "4"
    assert int(meta["bytes"]) == len("title") + len('"Plan"') + len("cursor") + len(
        '{"x":1,"y":[2,3.5]}'
    )
    history = [
        orjson.loads(r)
        for r in await cli_lines(redis_bench, "LRANGE", "session:{room-1}:history", "0", "-1")
    ]
    assert [(h["version"], h["key"], h["operation"]) for h in history] == [
        (1, "title", "SET"),
        (2, "cursor", "SET"),
        (3, "flag", "SET"),
        (4, "flag", "DELETE"),
    ]
    assert (history[0]["user_id"], history[0]["device_id"]) == ("u1", "d1")


async def test_redis_store_braces_in_session_id_are_escaped_in_keys(redis_bench: Bench) -> None:
    await redis_bench.store.apply("a{b}%", "k", 1, SET)
    keys = sorted(await cli_lines(redis_bench, "KEYS", "session:*"))
    assert keys == [
        "session:{a%7Bb%7D%25}",
        "session:{a%7Bb%7D%25}:history",
        "session:{a%7Bb%7D%25}:meta",
    ]


async def test_redis_store_write_refreshes_ttl(redis_bench: Bench) -> None:
    keys = ["session:{ttl}", "session:{ttl}:meta", "session:{ttl}:history"]
    await redis_bench.store.apply("ttl", "a", 1, SET)
    for key in keys:
        assert TTL_MS - 5_000 < int((await cli_lines(redis_bench, "PTTL", key))[0]) <= TTL_MS
        await redis_bench.redis.cli("PEXPIRE", key, "3000")  # type: ignore[union-attr]
    await redis_bench.store.apply("ttl", "b", 2, SET)
    for key in keys:
        assert TTL_MS - 5_000 < int((await cli_lines(redis_bench, "PTTL", key))[0]) <= TTL_MS


async def test_redis_store_history_list_is_capped(redis_bench: Bench) -> None:
    store = (await redis_bench.another(history_size=5)).store
    for i in range(12):
        await store.apply("capped", "k", i, SET)
    assert await cli_lines(redis_bench, "LLEN", "session:{capped}:history") == ["5"]
    oldest = await cli_lines(redis_bench, "LINDEX", "session:{capped}:history", "0")
    assert orjson.loads(oldest[0])["version"] == 8


async def test_redis_store_apply_publishes_header_and_frame(redis_bench: Bench) -> None:
    store = redis_bench.store
    limited = (await redis_bench.another(max_keys=1)).store
    process_id = redis_bench.broker.process_id
    async with tap_channel(redis_bench, "pub") as tap:
        change = await store.apply("pub", "title", {"t": "é"}, SET, ORIGIN)
        header, frame = await tap.next()
        assert header[:3] == [process_id, 7, None]
        assert isinstance(header[3], int)  # publish time (ms), for the lag metric
        expected = encode(
            MessageType.STATE_UPDATE,
            {"key": "title", "value": {"t": "é"}, "operation": "SET", "version": 1},
            timestamp=change.at,
            session_id="pub",
            user_id="u1",
            device_id="d1",
        )
        assert orjson.loads(frame) == orjson.loads(expected)

        with pytest.raises(LimitExceeded):
            await limited.apply("pub", "second", 1, SET)  # refused: publishes nothing
        await store.apply("pub", "title", None, DELETE, ORIGIN)
        header, frame = await tap.next()
        assert header[:3] == [process_id, 7, None]
        assert isinstance(header[3], int)  # publish time (ms), for the lag metric
        message = orjson.loads(frame)
        assert message["payload"] == {
            "key": "title",
            "value": None,
            "operation": "DELETE",
            "version": 2,
        }


async def test_redis_store_unavailable_fails_fast_and_recovers(redis_bench: Bench) -> None:
    store = redis_bench.store
    await store.apply("outage", "before", [1, 2], SET, ORIGIN)
    server = redis_bench.redis
    assert server is not None
    await server.stop()

    for attempt in (
        lambda: store.apply("outage", "during", 1, SET, ORIGIN),
        lambda: store.snapshot("outage"),
        lambda: store.changes_since("outage", 0),
    ):
        started = trio.current_time()
        with trio.fail_after(TIMEOUT + 1.0), pytest.raises(StoreUnavailable) as failed:
            await attempt()
        assert trio.current_time() - started < TIMEOUT + 1.0
        error = failed.value
        assert (error.status, error.error_code) == (503, "STORE_UNAVAILABLE")
        assert error.message.startswith("store unavailable:")
        assert "\n" not in error.message
        assert "Traceback" not in error.message

    await server.start()  # same port and directory: the AOF brings the data back
    with trio.fail_after(WAIT):
        snap = await store.snapshot("outage")
        assert (snap.version, snap.state) == (1, {"before": [1, 2]})
        assert (await store.apply("outage", "after", True, SET)).version == 2
    assert (await store.snapshot("outage")).state == {"before": [1, 2], "after": True}


async def test_redis_store_hung_redis_times_out_and_replies_stay_in_step(
    redis_bench: Bench,
) -> None:
    store = redis_bench.store
    await store.apply("hung", "a", 1, SET)
    assert redis_bench.redis is not None
    await redis_bench.redis.cli("CLIENT", "PAUSE", "1300", "ALL")  # up, but answers nothing
    for attempt in (lambda: store.apply("hung", "b", 2, SET), lambda: store.snapshot("hung")):
        started = trio.current_time()
        # No answer in time; or, for a request that needs a new connection while the
        # pipelined update holds the first one, no connection in time.
        with pytest.raises(
            StoreUnavailable, match=r"no answer within 0\.5s|establish a connection"
        ):
            await attempt()
        # The outcome is the refusal; the clock only shows it was not answered early
        # and did not hang (a loaded machine may add seconds, never subtract).
        assert TIMEOUT <= trio.current_time() - started < TIMEOUT + 10
    await redis_bench.redis.cli("CLIENT", "UNPAUSE")  # answered once the pause is over
    # The late replies to the abandoned requests must not be taken for the answers
    # to later ones: every reply below matches its own request.
    for i in range(3):
        snap = await store.snapshot("hung")
        change = await store.apply("hung", f"c{i}", i, SET)
        assert change.version == snap.version + 1
        changes = await store.changes_since("hung", 0)
        assert changes is not None
        assert [c.version for c in changes] == list(range(1, change.version + 1))
        assert changes[-1].key == f"c{i}"
    assert (await store.snapshot("hung")).state.items() >= {"a": 1, "c2": 2}.items()


async def test_redis_store_out_of_memory_is_unavailable_and_applies_nothing(
    redis_bench: Bench,
) -> None:
    store = (await redis_bench.another(max_state_bytes=50_000_000, max_keys=10_000)).store
    info = await cli_lines(redis_bench, "INFO", "memory")
    used = next(int(line.split(":")[1]) for line in info if line.startswith("used_memory:"))
    # Room for a few writes (each value is held twice: state and history), then OOM.
    assert redis_bench.redis is not None
    await redis_bench.redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    await redis_bench.redis.cli("CONFIG", "SET", "maxmemory", str(used + 1_000_000))
    accepted = 0
    with pytest.raises(StoreUnavailable) as refused:  # noqa: PT012
        for i in range(100):
            await store.apply("oom", f"k{i}", "v" * 100_000, SET)
            accepted += 1
    assert (refused.value.status, refused.value.error_code) == (503, "STORE_UNAVAILABLE")
    assert "OOM" in refused.value.message
    assert 1 <= accepted < 10  # refused midway, with earlier writes in place
    snap = await store.snapshot("oom")  # reads still work
    assert snap.version == accepted
    assert sorted(snap.state) == sorted(f"k{i}" for i in range(accepted))
    history = await store.changes_since("oom", 0)
    assert history is not None
    assert [c.version for c in history] == list(range(1, accepted + 1))
    meta_bytes = await cli_lines(redis_bench, "HGET", "session:{oom}:meta", "bytes")
    assert int(meta_bytes[0]) == sum(len(f"k{i}") + 100_002 for i in range(accepted))


async def test_redis_store_history_bytes_kept_in_meta_match_the_list(redis_bench: Bench) -> None:
    bench = await redis_bench.another(history_max_bytes=3_000)
    for i in range(20):
        await bench.store.apply("hb", "k", "x" * (100 + 50 * i), SET)
    records = await cli_lines(bench, "LRANGE", "session:{hb}:history", "0", "-1")
    kept = int((await cli_lines(bench, "HGET", "session:{hb}:meta", "history_bytes"))[0])
    assert kept == sum(len(r.encode()) for r in records) <= 3_000
    assert [orjson.loads(r)["version"] for r in records] == list(range(21 - len(records), 21))


async def test_redis_store_history_from_before_byte_accounting_is_dropped_once(
    redis_bench: Bench,
) -> None:
    # A session written by an older SyncBridge has a history list but no
    # history_bytes: its history (possibly huge) is dropped, not measured.
    store = redis_bench.store
    await store.apply("legacy", "k", "v" * 10_000, SET)
    for _ in range(3):
        await cli_lines(redis_bench, "RPUSH", "session:{legacy}:history", "x" * 10_000)
    await cli_lines(redis_bench, "HDEL", "session:{legacy}:meta", "history_bytes")
    await store.apply("legacy", "k", 2, SET)
    assert await cli_lines(redis_bench, "LLEN", "session:{legacy}:history") == ["1"]
    assert [c.value for c in await store.changes_since("legacy", 1) or []] == [2]
    assert await store.changes_since("legacy", 0) is None


async def test_redis_store_resume_measures_a_history_from_before_byte_accounting(
    redis_bench: Bench,
) -> None:
    # Until its next write, a session from an older SyncBridge has no
    # history_bytes: a resume must still not read a history over the budget.
    bench = await redis_bench.another(max_state_bytes=25_000)
    for i in range(5):
        await bench.store.apply("old", "k", f"{i}" + "v" * 10_000, SET)
    await cli_lines(bench, "HDEL", "session:{old}:meta", "history_bytes")
    assert await bench.store.changes_since("old", 0) is None  # ~50 KB to replay
    assert [c.version for c in await bench.store.changes_since("old", 3) or []] == [4, 5]
