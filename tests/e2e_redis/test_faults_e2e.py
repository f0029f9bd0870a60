"""Faults: Redis going away under a stream of updates, and Redis stalling during Auth.

Real redis-server (stopped and started again on the same port and AOF, or
paused with CLIENT PAUSE), real servers and clients; every wait is on an event,
a message or a process. (A SyncBridge process killed: test_processes_e2e.py.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import trio

from syncbridge.client import Client, ServerError, open_client
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from ..conftest import mint
from ..redis_harness import RedisServer
from . import health, open_resuming, open_servers, redis_settings, resume_auth, updates_until

BOUND = 30  # seconds; the test finishes far sooner
STORE_TIMEOUT = 0.5
# Every request is answered (an ack or a 503), never left hanging: the bound is
# STORE_TIMEOUT with room for a loaded machine, not a latency target.
ANSWER_BOUND = STORE_TIMEOUT + 10


@attrs.define
class Writer:
    """Sends updates one after another; records each as acknowledged or refused (503)."""

    client: Client
    acked: dict[str, tuple[int, int]] = attrs.Factory(dict)  # key -> (value, version)
    refused: list[str] = attrs.Factory(list)
    stop: trio.Event = attrs.Factory(trio.Event)
    numbers: Iterator[int] = attrs.Factory(itertools.count)  # shared to keep keys unique
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            n = next(self.numbers)
            key = f"u{n}"
            started = trio.current_time()
            refusal = None
            try:
                version = await self.client.update(key, n)
            except ServerError as exc:
                refusal = (exc.code, exc.error_code)
            else:
                self.acked[key] = (n, version)
            if refusal is not None:
                assert refusal == (503, "STORE_UNAVAILABLE")
                self.refused.append(key)
            assert trio.current_time() - started <= ANSWER_BOUND
            self._changed.set()
            self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


def apply_pushes(state: dict[str, Any], version: int, pushes: list[dict[str, Any]]) -> int:
    """Apply pushes to a device's copy of the state as a client must (docs/protocol.md §10):
    skip versions it has, stop at a gap (which a Resume fills). Returns the version reached."""
    for push in pushes:
        payload = push["payload"]
        if payload["version"] <= version:
            continue
        if payload["version"] != version + 1:
            break
        if payload["operation"] == "DELETE":
            state.pop(payload["key"], None)
        else:
            state[payload["key"]] = payload["value"]
        version = payload["version"]
    return version


def state_of(client: Client) -> tuple[dict[str, Any], int]:
    """A device's copy of the state from the pushes it received (it joined at version 0)."""
    state: dict[str, Any] = {}
    pushes = [m for m in client.pending() if m["type"] == MessageType.STATE_UPDATE]
    return state, apply_pushes(state, 0, pushes)


def apply_resume(state: dict[str, Any], version: int, resume: dict[str, Any]) -> int:
    payload = resume["payload"]
    assert payload["from_version"] == version
    if payload["mode"] == "snapshot":
        state.clear()
        state.update(payload["snapshot"]["state_data"])
        return int(payload["version"])
    changes = [{"payload": change} for change in payload["changes"]]
    assert apply_pushes(state, version, changes) == payload["version"]
    return int(payload["version"])


async def test_redis_outage_updates_are_acked_or_refused_then_recover(
    redis_server: RedisServer,
) -> None:
    settings = redis_settings(
        redis_server.url, store_timeout=STORE_TIMEOUT, rate_limit=1e6, rate_burst=1_000_000
    )
    with trio.fail_after(BOUND):
        async with (
            open_servers(settings) as (server,),
            open_client(server.url, token=mint(device="o")) as observer,
            open_client(server.url, token=mint(device="w")) as w,
            open_resuming(server.url) as late,
        ):
            writer = Writer(w)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.run)
                await writer.wait_until(lambda: len(writer.acked) >= 5)
                await redis_server.stop()  # while an update is on its way
                await writer.wait_until(lambda: len(writer.refused) >= 3)
                status, body = await health(server.http)
                assert status == 503
                assert (body["status"], body["store"]["status"]) == ("degraded", "unavailable")
                # A device arriving during the outage is refused, and may retry.
                with pytest.raises(ServerError) as refused:
                    await late.request(MessageType.AUTH, {"token": mint(device="late")})
                assert (refused.value.code, refused.value.error_code) == (503, "STORE_UNAVAILABLE")
                writer.stop.set()
            await redis_server.start()  # same port and directory: the AOF brings the data back

            # Events published while the relay was cut off may be lost, so every
            # device of a session this process serves is told to resync (4000).
            for device in (w, observer):
                closed = await device.wait_closed()
                assert closed.code == CloseCode.SLOW_CONSUMER
            status, body = await health(server.http)
            assert (status, body["status"], body["store"]["status"]) == (200, "ok", "ok")
            assert (await late.authenticate(mint(device="late")))["device_id"] == "late"

            seen, seen_version = state_of(observer)
            last_acked = max(version for _, version in writer.acked.values())
            async with (
                open_resuming(server.url) as w2,
                open_resuming(server.url) as observer2,
            ):
                _, resume = await resume_auth(w2, mint(device="w"), last_acked)
                assert resume["payload"]["mode"] == "changes"
                _, resume = await resume_auth(observer2, mint(device="o"), seen_version)
                seen_version = apply_resume(seen, seen_version, resume)
                # Updates succeed again without restarting SyncBridge.
                again = Writer(w2, numbers=writer.numbers)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(again.run)
                    await again.wait_until(lambda: len(again.acked) >= 5)
                    again.stop.set()
                assert again.refused == []
                final = await w2.snapshot()
                pushes = await updates_until(observer2, final["version"])
                assert apply_pushes(seen, seen_version, pushes) == final["version"]

    assert writer.refused, "no update was refused while Redis was down"
    acked = {**writer.acked, **again.acked}
    versions = [version for _, version in acked.values()]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    assert set(acked).isdisjoint(writer.refused)
    # Every acknowledged update survived the outage; a refused one was never
    # acknowledged (it may still have run in Redis if only its reply was lost).
    assert {key: final["state_data"].get(key) for key in acked} == {
        key: value for key, (value, _) in acked.items()
    }
    assert final["version"] >= max(versions)
    # The device that was connected through the outage converged to the same state.
    assert seen == final["state_data"]


async def test_redis_stall_during_auth_is_503_and_leaks_no_subscription(
    redis_server: RedisServer,
) -> None:
    store_timeout = 0.25  # the pause lasts six times as long: ample time to time out in
    settings = redis_settings(redis_server.url, store_timeout=store_timeout)
    events = "session:{s1}:events"
    with trio.fail_after(BOUND):
        async with open_servers(settings) as (server,):
            async with open_resuming(server.url) as client:
                # Redis answers nothing for a while: subscribing to the session times out.
                await redis_server.cli("CLIENT", "PAUSE", str(int(store_timeout * 6000)), "ALL")
                with pytest.raises(ServerError) as refused:
                    await client.request(MessageType.AUTH, {"token": mint()})
                assert (refused.value.code, refused.value.error_code) == (503, "STORE_UNAVAILABLE")
                await redis_server.cli("PING")  # answered once the pause is over
                # The same socket may retry; then it is a device like any other.
                assert (await client.authenticate(mint()))["device_id"] == "d1"
                assert await client.update("k", 1) == 1
                assert (await redis_server.cli("PUBSUB", "NUMSUB", events)).split() == [events, "1"]
            await server.app.wait_no_connections()
            # The refused Auth held no reference: the last device leaving unsubscribes.
            assert (await redis_server.cli("PUBSUB", "NUMSUB", events)).split() == [events, "0"]
