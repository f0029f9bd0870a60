"""The HTTP API across processes: two servers on one real redis-server."""

from __future__ import annotations

from typing import Any

import trio

from syncbridge.client import open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import mint
from ..e2e_redis import open_servers, redis_settings
from ..redis_harness import RedisServer
from . import apply_pushes, http_client, service_token

BOUND = 20  # seconds


async def test_state_http_write_on_one_process_reaches_device_on_another(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(redis_settings(redis_server.url), 2) as (a, b),
            open_client(b.url, token=mint(device="on-b")) as device,
            http_client(a, service_token()) as http,
        ):
            await device.update("old", 1)
            put = await http.put(
                "/v1/sessions/s1/state", json={"state": {"new": {"n": 1}, "more": [2]}}
            )
            assert put.status_code == 200, put.text
            pushes = [await device.wait_for(MessageType.STATE_UPDATE) for _ in range(3)]
            snap = await device.snapshot()
    applied: dict[str, Any] = {"old": 1}
    assert apply_pushes(applied, pushes) == 2
    assert [p["payload"]["version"] for p in pushes] == [2, 2, 2]
    assert applied == snap["state_data"] == {"new": {"n": 1}, "more": [2]}


async def test_state_writes_on_two_processes_keep_one_sequence(
    redis_server: RedisServer,
) -> None:
    writes = 10

    async def write(http: Any, prefix: str) -> None:
        for i in range(writes):
            state = {f"{prefix}{i}": i, "shared": prefix}
            response = await http.put("/v1/sessions/s1/state", json={"state": state})
            assert response.status_code == 200, response.text

    with trio.fail_after(BOUND):
        async with (
            open_servers(redis_settings(redis_server.url), 2) as (a, b),
            open_client(a.url, token=mint(device="watcher")) as watcher,
            http_client(a, service_token()) as on_a,
            http_client(b, service_token()) as on_b,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write, on_a, "a")
                nursery.start_soon(write, on_b, "b")
            marker = await on_a.put("/v1/sessions/s1/state", json={"state": {"done": True}})
            last = marker.json()["version"]
            pushes: list[dict[str, Any]] = []
            while not pushes or pushes[-1]["payload"]["version"] < last:
                pushes.append(await watcher.wait_for(MessageType.STATE_UPDATE))
            final = (await on_b.get("/v1/sessions/s1/state")).json()
    versions = [p["payload"]["version"] for p in pushes]
    assert versions == sorted(versions)
    assert sorted(set(versions)) == list(range(1, last + 1))
    assert final["version"] == last
