"""The reconnecting client through real faults: a server restart on Redis, a Redis outage,
a slow-consumer close, one of two processes SIGKILLed.

Real redis-server, real ``python -m syncbridge`` processes (or in-process servers
where the fault is Redis's), real sockets. Every wait is for an event of the
client's (ConnectionLost, Reconnected, a change) or an acknowledgement, bounded
by ``fail_after``. The check in every test: the client's mirror equals what a
fresh device reads from the server.
"""

from __future__ import annotations

import signal
from typing import Any

import trio

from syncbridge.client import (
    Backoff,
    ConnectionLost,
    Reconnected,
    Resynced,
    SyncClient,
    open_client,
    open_sync_client,
)

from ..conftest import SECRET, make_settings, mint, start_server
from ..process.proc import free_port, run_server
from ..redis_harness import RedisServer
from . import redis_settings

BOUND = 40
FAST = {"backoff": Backoff(initial=0.05, max_delay=0.5), "heartbeat_interval": None}


async def read_back(url: str, session: str = "s1") -> tuple[dict[str, Any], int]:
    """The session as a fresh device on ``url`` sees it."""
    token = mint(device="probe", session=session)
    async with open_client(url, token=token, heartbeat_interval=None) as probe:
        snapshot = await probe.snapshot()
    return snapshot["state_data"], snapshot["version"]


async def wait_for(client: SyncClient, kind: type) -> list[Any]:
    """The client's events up to and including the first of ``kind``."""
    events = []
    async for event in client.events():
        events.append(event)
        if isinstance(event, kind):
            return events
    raise AssertionError(f"events ended before a {kind.__name__}: {events}")


def process_env(redis: RedisServer, **extra: str) -> dict[str, str]:
    return {"JWT_SECRET": SECRET, "REDIS_URL": redis.url, "SHUTDOWN_TIMEOUT": "2s", **extra}


async def test_sync_client_converges_after_a_server_restart_on_redis(
    redis_server: RedisServer,
) -> None:
    env = process_env(redis_server)
    port = free_port()
    with trio.fail_after(BOUND):
        async with run_server(env=env) as other, run_server(env=env, port=port) as first:
            url = first.ws_url
            async with (
                open_sync_client(url, token=mint(), **FAST) as client,
                open_client(other.ws_url, token=mint(device="d2")) as device2,
            ):
                await client.set("a", 1)
                await device2.update("b", 2)
                await client.wait_until(lambda _s, v: v == 2)
                assert await first.stop() == 0  # SIGTERM: drained, clients told 1001
                lost = await wait_for(client, ConnectionLost)
                assert lost[-1].code == 1001
                # While it is down: the other device writes, this one queues a write.
                await device2.update("b", 3)
                queued = client.submit("c", 4)
                async with run_server(env=env, port=port):
                    events = await wait_for(client, Reconnected)
                    # State survived in Redis: the client resumed by changes, no resync.
                    assert not [e for e in events if isinstance(e, Resynced)]
                    assert await queued.wait() == 4
                    state, version = await read_back(url)
                    assert (dict(client.state), client.version) == (state, version)
                    assert state == {"a": 1, "b": 3, "c": 4}


async def test_sync_client_rides_out_a_redis_outage(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    server = await start_server(
        nursery, redis_settings(redis_server.url, store_timeout=0.5, presence_ttl=5.0)
    )
    with trio.fail_after(BOUND):
        async with open_sync_client(server.url, token=mint(), **FAST) as client:
            await client.set("before", 1)
            await redis_server.stop()
            # Refused with 503 (nothing applied) or timed out (maybe applied): the
            # client reconnects and lets the Resume tell, once Redis is back.
            during = client.submit("during", 2)
            lost = await wait_for(client, ConnectionLost)
            assert "store unavailable" in (lost[-1].reason or "")
            await redis_server.start()
            await wait_for(client, Reconnected)
            assert await during.wait() == 2
            assert await client.set("after", 3) == 3
            state, version = await read_back(server.url)
            assert (dict(client.state), client.version) == (state, version)
            assert state == {"before": 1, "during": 2, "after": 3}
    server.stop.set()


async def test_sync_client_closed_as_slow_consumer_resumes(nursery: trio.Nursery) -> None:
    # The application does not read its events and asked the client to wait for
    # it (wait_for_events): the client stops reading, the server's outbox fills,
    # and the server closes the socket as a slow consumer (4000).
    server = await start_server(
        nursery,
        make_settings(outbox_size=2, slow_consumer_timeout=0.2, history_size=5, rate_limit=1e4),
    )
    blob = "x" * 100_000
    with trio.fail_after(BOUND):
        async with open_sync_client(
            server.url,
            token=mint(),
            max_events=1,
            wait_for_events=True,
            max_backlog=2,
            **FAST,
        ) as client:
            async with open_client(server.url, token=mint(device="writer")) as writer:
                for n in range(200):  # 20 MB: more than the loopback socket buffers
                    version = await writer.update("blob", f"{n}{blob}")
            # Now the application reads: the close, then the resume (history is too
            # short for the changes it missed, so a snapshot).
            events = await wait_for(client, Reconnected)
            assert [e.code for e in events if isinstance(e, ConnectionLost)] == [4000]
            assert any(isinstance(e, Resynced) for e in events)
            await client.wait_until(lambda _s, v: v == version)
            state, _ = await read_back(server.url)
            assert dict(client.state) == state
    server.stop.set()


async def test_sync_client_moves_to_the_other_process_when_one_is_killed(
    redis_server: RedisServer,
) -> None:
    env = process_env(redis_server, PRESENCE_TTL="2s")
    with trio.fail_after(BOUND):
        async with (
            run_server(env=env) as a,
            run_server(env=env) as b,
            open_sync_client([a.ws_url, b.ws_url], token=mint(), **FAST) as client,
            open_client(b.ws_url, token=mint(device="d2")) as device2,
        ):
            assert client.url == a.ws_url
            await client.set("a", 1)
            await a.stop(signal.SIGKILL)
            lost = await wait_for(client, ConnectionLost)
            assert lost[-1].code == 1006  # no close frame from a killed process
            await device2.update("b", 2)
            events = await wait_for(client, Reconnected)
            assert events[-1].url == b.ws_url
            await client.wait_until(lambda s, _v: s.get("b") == 2)
            assert await client.set("c", 3) == 3
            state, version = await read_back(b.ws_url)
            assert (dict(client.state), client.version) == (state, version)
