"""Resume (15): Auth with ``last_version`` replays what a device missed, on both stores.

Every test runs twice: on the memory store and on a real redis-server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from syncbridge.client import Client, open_client
from syncbridge.protocol.messages import MessageType
from syncbridge.settings import Settings

from ..conftest import make_settings, mint
from ..redis_harness import RedisServer, open_redis_server
from . import open_resuming, open_servers, redis_settings, resume_auth, updates_until

BOUND = 15  # seconds; every test finishes far sooner


@attrs.frozen
class Backend:
    """How to configure a server on one of the two stores."""

    redis: RedisServer | None

    def settings(self, **overrides: Any) -> Settings:
        if self.redis is None:
            return make_settings(**overrides)
        return redis_settings(self.redis.url, **overrides)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend(None)
    else:
        async with open_redis_server(tmp_path / "redis") as redis:
            yield Backend(redis)


def change(version: int, key: str, value: Any, user: str, device: str) -> dict[str, Any]:
    operation = "DELETE" if value is None else "SET"
    return {
        "key": key,
        "value": value,
        "operation": operation,
        "version": version,
        "user_id": user,
        "device_id": device,
    }


async def write(client: Client, count: int, prefix: str = "k") -> int:
    version = 0
    for i in range(count):
        version = await client.update(f"{prefix}{i}", i)
    return version


async def test_resume_replays_exactly_the_missed_changes(backend: Backend) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(backend.settings()) as (server,),
            open_client(server.url, token=mint(user="alice", device="w")) as w,
            open_client(server.url, token=mint(user="carol", device="c")) as c,
        ):
            async with open_client(server.url, token=mint(user="rita", device="r")) as r:
                assert await w.update("a", 1) == 1
                assert [p["payload"]["version"] for p in await updates_until(r, 1)] == [1]
            await w.wait_for(MessageType.DEVICE_LEFT)  # r is gone
            assert await w.update("b", {"x": [1]}) == 2
            assert await c.delete("a") == 3
            assert await w.update("c", "z") == 4
            async with open_resuming(server.url) as r:
                success, resume = await resume_auth(r, mint(user="rita", device="r"), 1)
                assert success["type"] == MessageType.AUTH_SUCCESS
                assert resume["payload"] == {
                    "mode": "changes",
                    "from_version": 1,
                    "version": 4,
                    "changes": [
                        change(2, "b", {"x": [1]}, "alice", "w"),
                        change(3, "a", None, "carol", "c"),
                        change(4, "c", "z", "alice", "w"),
                    ],
                }
                # Live again: the next update arrives as a push. (A push of a version
                # the Resume covered may come too: the relay can lag behind the
                # store, and clients skip versions they have; docs/protocol.md §10.)
                assert await w.update("d", 5) == 5
                pushes = await updates_until(r, 5)
                assert [p["payload"]["version"] for p in pushes if p["payload"]["version"] > 4] == [
                    5
                ]


async def test_resume_up_to_date_gets_no_changes(backend: Backend) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(backend.settings()) as (server,),
            open_client(server.url, token=mint(device="w")) as w,
        ):
            async with open_resuming(server.url) as fresh:
                # A session never written: version 0 is up to date.
                _, resume = await resume_auth(fresh, mint(device="r"), 0)
                assert resume["payload"] == {
                    "mode": "changes",
                    "from_version": 0,
                    "version": 0,
                    "changes": [],
                }
            assert await write(w, 3) == 3
            async with open_resuming(server.url) as r:
                _, resume = await resume_auth(r, mint(device="r"), 3)
                assert resume["payload"] == {
                    "mode": "changes",
                    "from_version": 3,
                    "version": 3,
                    "changes": [],
                }
            async with open_resuming(server.url) as r:
                _, resume = await resume_auth(r, mint(device="r"), 0)
                assert resume["payload"]["mode"] == "changes"
                assert resume["payload"]["version"] == 3
                assert resume["payload"]["changes"] == [
                    change(v, f"k{v - 1}", v - 1, "u1", "w") for v in (1, 2, 3)
                ]


async def test_resume_beyond_history_gets_a_snapshot(backend: Backend) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(backend.settings(history_size=5)) as (server,),
            open_client(server.url, token=mint(device="w")) as w,
        ):
            assert await write(w, 8) == 8
            await w.delete("k0")
            assert await w.update("k1", "last") == 10
            assert await w.update("k2", {"deep": [None]}) == 11
            full = await w.snapshot()
            assert full["version"] == 11
            async with open_resuming(server.url) as r:
                # Missed 10 changes; the history holds the last 5.
                _, resume = await resume_auth(r, mint(device="r"), 1)
                assert resume["payload"] == {
                    "mode": "snapshot",
                    "from_version": 1,
                    "version": 11,
                    "snapshot": full,
                }
            async with open_resuming(server.url) as r:
                # One change more than the history holds: a snapshot too.
                _, resume = await resume_auth(r, mint(device="r"), 5)
                assert resume["payload"]["mode"] == "snapshot"
                assert resume["payload"]["snapshot"]["state_data"] == full["state_data"]
            async with open_resuming(server.url) as r:
                # Exactly the history: changes 7..11.
                _, resume = await resume_auth(r, mint(device="r"), 6)
                assert resume["payload"]["mode"] == "changes"
                assert [c["version"] for c in resume["payload"]["changes"]] == [7, 8, 9, 10, 11]
                assert resume["payload"]["changes"][2] == change(9, "k0", None, "u1", "w")


async def test_resume_ahead_of_a_restarted_session_gets_a_snapshot(backend: Backend) -> None:
    settings = backend.settings()
    with trio.fail_after(BOUND):
        async with (
            open_servers(settings) as (server,),
            open_client(server.url, token=mint(device="w")) as w,
        ):
            assert await write(w, 3) == 3
        # The session is gone: on memory it died with the server; on Redis its
        # keys expire (FLUSHALL stands in for SESSION_TTL running out).
        if backend.redis is not None:
            await backend.redis.cli("FLUSHALL")
        async with (
            open_servers(settings) as (server,),
            open_client(server.url, token=mint(device="w")) as w,
        ):
            assert await w.update("new", True) == 1
            full = await w.snapshot()
            async with open_resuming(server.url) as r:
                _, resume = await resume_auth(r, mint(device="r"), 3)
                assert resume["payload"] == {
                    "mode": "snapshot",
                    "from_version": 3,
                    "version": 1,
                    "snapshot": full,
                }
                assert full["state_data"] == {"new": True}
            async with open_resuming(server.url) as r:
                _, resume = await resume_auth(r, mint(device="r", session="never-written"), 7)
                snapshot = resume["payload"]["snapshot"]
                assert resume["payload"]["mode"] == "snapshot"
                assert resume["payload"]["version"] == 0
                assert (snapshot["state_data"], snapshot["version"]) == ({}, 0)


@pytest.mark.parametrize("last_version", ["3", -1, 1.5, True, [1]])
async def test_resume_invalid_last_version_is_400(backend: Backend, last_version: Any) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(backend.settings()) as (server,),
            open_resuming(server.url) as client,
        ):
            await client.send(
                {
                    "type": MessageType.AUTH,
                    "payload": {"token": mint(), "last_version": last_version},
                    "correlation_id": "a1",
                }
            )
            reply = await client.next_message(timeout=5)
            assert reply["type"] == MessageType.ERROR
            assert reply["correlation_id"] == "a1"
            assert reply["payload"]["code"] == 400
            assert reply["payload"]["error_code"] == "INVALID_MESSAGE"
            assert reply["payload"]["details"]["field"] == "payload.last_version"
            assert "last_version" in reply["payload"]["message"]
            # Not authenticated, and no Resume came.
            await client.send({"type": MessageType.SNAPSHOT_REQUEST, "correlation_id": "s1"})
            refused = await client.next_message(timeout=5)
            assert (refused["type"], refused["correlation_id"]) == (MessageType.ERROR, "s1")
            assert refused["payload"]["error_code"] == "NOT_AUTHENTICATED"
            assert client.pending() == []


async def test_resume_not_sent_without_last_version(backend: Backend) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(backend.settings()) as (server,),
            open_client(server.url, token=mint(device="w")) as w,
        ):
            await write(w, 2)
            async with open_client(server.url, token=mint(device="r")) as r:
                # A later reply on the same socket proves no Resume came in between.
                await r.heartbeat("probe")
                assert [m for m in r.pending() if m["type"] == MessageType.RESUME] == []


async def test_resume_over_max_state_bytes_gets_a_snapshot(backend: Backend) -> None:
    # MAX_STATE_BYTES reaches the replay budget (it used to be a hard-coded
    # 1 000 000, so a 6 KB replay with MAX_STATE_BYTES=1000 came back as changes).
    with trio.fail_after(BOUND):
        async with (
            open_servers(backend.settings(max_state_bytes=1000)) as (server,),
            open_client(server.url, token=mint(device="w")) as w,
        ):
            for i in range(12):
                assert await w.update("k", f"{i:02d}" + "x" * 400) == i + 1
            full = await w.snapshot()
            async with open_resuming(server.url) as r:
                _, resume = await resume_auth(r, mint(device="r"), 0)  # ~6 KB to replay
                assert resume["payload"] == {
                    "mode": "snapshot",
                    "from_version": 0,
                    "version": 12,
                    "snapshot": full,
                }
            async with open_resuming(server.url) as r:
                _, resume = await resume_auth(r, mint(device="r"), 11)  # one record: fits
                assert resume["payload"]["mode"] == "changes"
                assert [c["version"] for c in resume["payload"]["changes"]] == [12]
            metrics = server.app.metrics.render().decode()
            assert 'syncbridge_resumes_total{mode="snapshot"} 1.0' in metrics
            assert 'syncbridge_resumes_total{mode="changes"} 1.0' in metrics
