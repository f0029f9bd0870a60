"""GET history (410 when not retained) and GET devices (online, across processes)."""

from __future__ import annotations

import trio

from syncbridge.client import open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import mint, start_server
from ..e2e_redis import open_servers, redis_settings
from ..redis_harness import RedisServer
from . import http_client, service_token
from .conftest import StoreUnderTest
from .test_state_api_e2e import assert_problem

BOUND = 20


async def test_history_lists_changes_after_a_version(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings(history_size=4))
        with trio.fail_after(BOUND):
            async with (
                open_client(server.url, token=mint(device="phone")) as phone,
                http_client(server, service_token()) as http,
            ):
                await phone.update("a", 1)
                await http.put("/v1/sessions/s1/state", json={"state": {"b": 2, "c": 3}})
                all_ = await http.get("/v1/sessions/s1/history?since=0")
                since1 = await http.get("/v1/sessions/s1/history", params={"since": 1})
                current = await http.get("/v1/sessions/s1/history?since=2")
                ahead = await http.get("/v1/sessions/s1/history?since=9")
                bad = await http.get("/v1/sessions/s1/history?since=-1")
                for i in range(4):
                    await phone.update("n", i)
                gone = await http.get("/v1/sessions/s1/history?since=1")
                kept = await http.get("/v1/sessions/s1/history?since=2")
            async with http_client(server, mint(session="other")) as other:
                forbidden = await other.get("/v1/sessions/s1/history?since=0")
        server.stop.set()
    body = all_.json()
    assert (body["since"], body["version"]) == (0, 2)
    assert [(c["version"], c["key"], c["operation"]) for c in body["changes"]] == [
        (1, "a", "SET"),
        (2, "a", "DELETE"),
        (2, "b", "SET"),
        (2, "c", "SET"),
    ]
    assert body["changes"][0]["device_id"] == "phone"
    assert body["changes"][1]["device_id"] == "svc"
    assert isinstance(body["changes"][0]["at"], int)
    assert [c["version"] for c in since1.json()["changes"]] == [2, 2, 2]
    assert current.json()["changes"] == []
    assert assert_problem(ahead, 410, "HISTORY_GONE")["since"] == 9
    assert_problem(bad, 422, "INVALID_QUERY")
    assert_problem(gone, 410, "HISTORY_GONE")
    assert [c["version"] for c in kept.json()["changes"]] == [3, 4, 5, 6]
    assert_problem(forbidden, 403, "FORBIDDEN")


async def test_devices_lists_online_devices(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with (
                open_client(server.url, token=mint(device="phone")) as phone,
                http_client(server, mint(device="backend")) as http,
            ):
                async with open_client(server.url, token=mint(device="tv", user="u2")):
                    await phone.wait_for(MessageType.DEVICE_JOINED)
                    both = (await http.get("/v1/sessions/s1/devices")).json()
                await phone.wait_for(MessageType.DEVICE_LEFT)
                one = (await http.get("/v1/sessions/s1/devices")).json()
        server.stop.set()
    assert both["count"] == 2
    assert {(d["device_id"], d["user_id"]) for d in both["devices"]} == {
        ("phone", "u1"),
        ("tv", "u2"),
    }
    assert all(d["is_online"] for d in both["devices"])
    assert (one["count"], [d["device_id"] for d in one["devices"]]) == (1, ["phone"])


async def test_devices_on_two_processes_are_listed_by_either(redis_server: RedisServer) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(redis_settings(redis_server.url), 2) as (a, b),
            open_client(a.url, token=mint(device="on-a")),
            open_client(b.url, token=mint(device="on-b")),
            http_client(a, service_token()) as http,
        ):
            listed = (await http.get("/v1/sessions/s1/devices")).json()
    assert sorted(d["device_id"] for d in listed["devices"]) == ["on-a", "on-b"]
