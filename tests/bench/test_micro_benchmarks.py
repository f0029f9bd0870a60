"""Micro-benchmarks of the hot path's pure parts (pytest-benchmark).

CI runs them with --benchmark-disable (pyproject addopts): each body runs once, as
a smoke test that the benchmarks keep working; no timing is asserted. For figures:
``python -m pytest tests/bench --benchmark-enable --benchmark-only``.
"""

from __future__ import annotations

from typing import Any

import orjson
import trio

from syncbridge.protocol.codec import decode, encode
from syncbridge.protocol.messages import MessageType, Operation, StateUpdateRequest
from syncbridge.protocol.session import SessionState
from syncbridge.store.memory import MemoryStore

UPDATE = orjson.dumps(
    {
        "type": 5,
        "timestamp": 1_700_000_000,
        "payload": {"key": "cursor", "value": {"x": 10, "y": 20, "note": "n" * 150}},
        "correlation_id": "c1",
    }
).decode()


def test_bench_decode_state_update(benchmark: Any) -> None:
    envelope = benchmark(decode, UPDATE)
    assert isinstance(envelope.request, StateUpdateRequest)
    assert envelope.request.key == "cursor"


def test_bench_encode_broadcast(benchmark: Any) -> None:
    payload = {"key": "cursor", "value": {"x": 10, "y": 20}, "operation": "SET", "version": 7}

    def run() -> str:
        return encode(
            MessageType.STATE_UPDATE,
            payload,
            timestamp=1_700_000_000,
            session_id="s1",
            user_id="u1",
            device_id="d1",
        )

    frame = benchmark(run)
    assert orjson.loads(frame)["payload"]["version"] == 7


def test_bench_session_state_apply(benchmark: Any) -> None:
    state = SessionState(session_id="s1", history_size=1000)
    value = {"x": 10, "y": 20, "note": "n" * 150}

    def run() -> int:
        return state.apply(
            "cursor", value, Operation.SET, now=1, max_state_bytes=1 << 30, max_keys=1 << 20
        ).version

    version = benchmark(run)
    assert version == state.version


def test_bench_memory_store_apply(benchmark: Any) -> None:
    store = MemoryStore(
        session_ttl=3600, history_size=1000, max_state_bytes=1 << 30, max_keys=1 << 20
    )

    async def hundred() -> int:
        version = 0
        for i in range(100):
            version = (await store.apply("s1", f"k{i % 10}", i, Operation.SET)).version
        return version

    version = benchmark(trio.run, hundred)
    assert version >= 100
