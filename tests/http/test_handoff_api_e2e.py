"""Handoff tickets: single use, same user, hashed in the shared store, Broadcast 13."""

from __future__ import annotations

import time
from typing import Any

import orjson
import trio

from syncbridge.client import open_client
from syncbridge.protocol.messages import MessageType
from syncbridge.store.memory import MemoryStore

from ..conftest import make_settings, mint, start_server
from ..e2e_redis import open_servers, redis_settings
from ..redis_harness import RedisServer
from . import http_client, service_token
from .conftest import StoreUnderTest
from .test_state_api_e2e import assert_problem

BOUND = 20


async def test_handoff_ticket_claimed_once_by_the_same_user(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with (
                open_client(server.url, token=mint(device="phone")) as phone,
                http_client(server, mint(device="phone")) as phone_http,
                http_client(server, mint(device="tv", session="tv-own")) as tv_http,
                http_client(server, mint(user="mallory", session="m")) as mallory,
            ):
                await phone.update("song", "intro")
                created = await phone_http.post("/v1/sessions/s1/handoff", json={"ttl": 600})
                ticket = created.json()["ticket"]
                stolen = await mallory.post(
                    "/v1/handoff/claim", json={"ticket": ticket, "device_id": "evil"}
                )
                claimed = await tv_http.post(
                    "/v1/handoff/claim", json={"ticket": ticket, "device_id": "tv"}
                )
                again = await tv_http.post(
                    "/v1/handoff/claim", json={"ticket": ticket, "device_id": "tv"}
                )
                notice = await phone.wait_for(MessageType.BROADCAST)
                new_token = claimed.json()["token"]
                async with http_client(server, new_token) as tv_in_session:
                    state = (await tv_in_session.get("/v1/sessions/s1/state")).json()
                async with open_client(server.url, token=new_token) as tv_ws:
                    snap = await tv_ws.snapshot()
        server.stop.set()
    assert created.status_code == 201
    assert len(ticket) >= 43  # 256 bits, url-safe base64
    assert created.json()["expires_at"] - time.time() > 590
    assert_problem(stolen, 403, "FORBIDDEN")
    assert claimed.status_code == 200, claimed.text
    body = claimed.json()
    assert (body["session_id"], body["user_id"], body["device_id"], body["version"]) == (
        "s1",
        "u1",
        "tv",
        1,
    )
    assert_problem(again, 410, "HANDOFF_GONE")
    assert notice["payload"]["event"] == "handoff_claimed"
    assert notice["payload"]["device_id"] == "tv"
    assert notice["payload"]["version"] == 1
    assert state["state"] == snap["state_data"] == {"song": "intro"}
    # The ticket is stored only as its hash and carries no state.
    assert ticket not in orjson.dumps(state).decode()


async def test_handoff_needs_a_device_token_and_a_valid_ttl(server: Any) -> None:
    with trio.fail_after(BOUND):
        async with http_client(server, service_token()) as http:
            service = await http.post("/v1/sessions/s1/handoff")
        async with http_client(server, mint()) as http:
            long = await http.post("/v1/sessions/s1/handoff", json={"ttl": 901})
            zero = await http.post("/v1/sessions/s1/handoff", json={"ttl": 0})
            default = await http.post("/v1/sessions/s1/handoff")
            unknown = await http.post(
                "/v1/handoff/claim", json={"ticket": "x" * 43, "device_id": "tv"}
            )
            bad = await http.post("/v1/handoff/claim", json={"ticket": "x"})
    assert_problem(service, 403, "FORBIDDEN")
    assert_problem(long, 422, "INVALID_BODY")
    assert_problem(zero, 422, "INVALID_BODY")
    assert 290 <= default.json()["expires_at"] - time.time() <= 301
    assert_problem(unknown, 410, "HANDOFF_GONE")
    assert_problem(bad, 422, "INVALID_BODY")


async def test_handoff_expired_ticket_is_gone_on_memory() -> None:
    now = [time.time()]
    settings = make_settings()
    store = MemoryStore(
        session_ttl=settings.session_ttl,
        history_size=settings.history_size,
        max_state_bytes=settings.max_state_bytes,
        max_keys=settings.max_keys,
        clock=lambda: now[0],
    )
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, settings, store=store, clock=lambda: now[0])
        with trio.fail_after(BOUND):
            async with http_client(server, mint()) as http:
                ticket = (await http.post("/v1/sessions/s1/handoff", json={"ttl": 60})).json()
                now[0] += 61
                late = await http.post(
                    "/v1/handoff/claim", json={"ticket": ticket["ticket"], "device_id": "tv"}
                )
        server.stop.set()
    assert_problem(late, 410, "HANDOFF_GONE")


async def test_handoff_expired_ticket_is_gone_on_redis(redis_server: RedisServer) -> None:
    # The server's clock runs 10 minutes behind: Redis expires the ticket (EXAT) at once.
    async with trio.open_nursery() as nursery:
        server = await start_server(
            nursery, redis_settings(redis_server.url), clock=lambda: time.time() - 600
        )
        with trio.fail_after(BOUND):
            async with http_client(server, mint()) as http:
                ticket = (await http.post("/v1/sessions/s1/handoff", json={"ttl": 60})).json()
                late = await http.post(
                    "/v1/handoff/claim", json={"ticket": ticket["ticket"], "device_id": "tv"}
                )
        server.stop.set()
    assert_problem(late, 410, "HANDOFF_GONE")


async def test_handoff_claimed_on_another_process_tells_the_source(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_servers(redis_settings(redis_server.url), 2) as (a, b),
            open_client(a.url, token=mint(device="phone")) as phone,
            http_client(a, mint(device="phone")) as on_a,
            http_client(b, mint(device="tv", session="elsewhere")) as on_b,
        ):
            ticket = (await on_a.post("/v1/sessions/s1/handoff")).json()["ticket"]
            claimed = await on_b.post(
                "/v1/handoff/claim", json={"ticket": ticket, "device_id": "tv"}
            )
            notice = await phone.wait_for(MessageType.BROADCAST)
            twice = await on_a.post(
                "/v1/handoff/claim", json={"ticket": ticket, "device_id": "tv2"}
            )
    assert claimed.status_code == 200
    assert notice["payload"]["event"] == "handoff_claimed"
    assert_problem(twice, 410, "HANDOFF_GONE")
