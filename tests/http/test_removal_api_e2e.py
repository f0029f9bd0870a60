"""Device kick (4409, DeviceLeft), ?revoke=true (4402), session delete (4410), token revocation."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from syncbridge.auth import TokenAuthority
from syncbridge.client import AuthFailed, open_client
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from ..conftest import SECRET, mint, start_server
from ..e2e_redis import open_servers, redis_settings
from ..redis_harness import RedisServer
from . import http_client, service_token
from .conftest import StoreUnderTest
from .test_state_api_e2e import assert_problem

BOUND = 20


def jti(token: str) -> str:
    token_id = TokenAuthority(SECRET).verify(token, now=time.time()).token_id
    assert token_id is not None
    return token_id


async def test_device_kick_by_same_user_closes_4409_and_tells_the_others(
    store: StoreUnderTest,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            tv_token = mint(device="tv")
            async with (
                open_client(server.url, token=mint(device="phone")) as phone,
                http_client(server, mint(device="phone")) as http,
                http_client(server, mint(device="other", user="u2")) as stranger,
            ):
                async with open_client(server.url, token=tv_token) as tv:
                    await phone.wait_for(MessageType.DEVICE_JOINED)
                    refused = await stranger.delete("/v1/sessions/s1/devices/tv")
                    unknown = await http.delete("/v1/sessions/s1/devices/radio")
                    kicked = await http.delete("/v1/sessions/s1/devices/tv")
                    closed = await tv.wait_closed()
                left = await phone.wait_for(MessageType.DEVICE_LEFT)
                # Without ?revoke=true the device may come back.
                async with open_client(server.url, token=tv_token) as back:
                    assert (await back.snapshot())["version"] == 0
        server.stop.set()
    assert_problem(refused, 403, "FORBIDDEN")
    assert_problem(unknown, 404, "DEVICE_NOT_FOUND")
    assert kicked.status_code == 204
    assert closed.code == CloseCode.DEVICE_REMOVED
    assert left["payload"]["device_id"] == "tv"


async def test_device_kick_with_revoke_refuses_its_tokens(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            tv_token = mint(device="tv")
            async with http_client(server, service_token()) as http:
                async with open_client(server.url, token=tv_token) as tv:
                    kicked = await http.delete("/v1/sessions/s1/devices/tv?revoke=true")
                    closed = await tv.wait_closed()
                async with open_client(server.url) as again:
                    with pytest.raises(AuthFailed) as refused:
                        await again.authenticate(tv_token)
                async with http_client(server, tv_token) as tv_http:
                    http_refused = await tv_http.get("/v1/sessions/s1/state")
                async with http_client(server, mint(device="phone")) as phone_http:
                    unaffected = await phone_http.get("/v1/sessions/s1/state")
                bad_flag = await http.delete("/v1/sessions/s1/devices/tv?revoke=maybe")
        server.stop.set()
    assert kicked.status_code == 204
    assert closed.code == CloseCode.TOKEN_REVOKED
    assert "revoked" in refused.value.message
    assert "revoked" in assert_problem(http_refused, 401, "UNAUTHENTICATED")["detail"]
    assert unaffected.status_code == 200
    assert_problem(bad_flag, 422, "INVALID_QUERY")


async def test_session_delete_needs_service_and_closes_4410(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with http_client(server, service_token()) as http:
                await http.put("/v1/sessions/s1/state", json={"state": {"a": 1}})
                await http.post("/v1/sessions/s1/snapshots", json={"label": "x"})
                async with (
                    open_client(server.url, token=mint(device="phone")) as phone,
                    http_client(server, mint(device="phone")) as device_http,
                ):
                    refused = await device_http.delete("/v1/sessions/s1")
                    deleted = await http.delete("/v1/sessions/s1")
                    closed = await phone.wait_closed()
                state = (await http.get("/v1/sessions/s1/state")).json()
                points = (await http.get("/v1/sessions/s1/snapshots")).json()
                history = await http.get("/v1/sessions/s1/history?since=1")
        server.stop.set()
    assert_problem(refused, 403, "FORBIDDEN")
    assert deleted.status_code == 204
    assert closed.code == CloseCode.SESSION_DELETED
    assert (state["version"], state["state"]) == (0, {})
    assert points["snapshots"] == []
    assert_problem(history, 410, "HISTORY_GONE")


async def test_token_revoke_by_jti_closes_its_sockets_only(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            doomed, kept = mint(device="a"), mint(device="a")
            async with (
                open_client(server.url, token=doomed) as doomed_ws,
                open_client(server.url, token=kept) as kept_ws,
                http_client(server, doomed) as self_http,
                http_client(server, kept) as kept_http,
            ):
                other = await kept_http.post("/v1/tokens/revoke", json={"jti": jti(doomed)})
                own = await self_http.post("/v1/tokens/revoke", json={"jti": jti(doomed)})
                closed = await doomed_ws.wait_closed()
                after = await self_http.get("/v1/sessions/s1/state")
                assert (await kept_ws.snapshot())["version"] == 0
            async with http_client(server, service_token()) as http:
                answers: list[Any] = [
                    await http.post("/v1/tokens/revoke", json={}),
                    await http.post("/v1/tokens/revoke", json={"jti": "x", "device_id": "a"}),
                    await http.post("/v1/tokens/revoke", json={"session_id": "s1"}),
                    await http.post("/v1/tokens/revoke", json={"jti": ""}),
                ]
                by_device = await http.post(
                    "/v1/tokens/revoke", json={"session_id": "s1", "device_id": "a"}
                )
            async with open_client(server.url) as again:
                with pytest.raises(AuthFailed):
                    await again.authenticate(kept)
        server.stop.set()
    assert_problem(other, 403, "FORBIDDEN")
    assert own.status_code == 200
    assert own.json()["until"] > time.time()
    assert closed.code == CloseCode.TOKEN_REVOKED
    assert_problem(after, 401, "UNAUTHENTICATED")
    for answer in answers:
        assert_problem(answer, 422, "INVALID_BODY")
    assert by_device.status_code == 200


async def test_kick_and_revoke_reach_sockets_on_another_process(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(BOUND):
        tv_token = mint(device="tv")
        async with (
            open_servers(redis_settings(redis_server.url), 2) as (a, b),
            open_client(b.url, token=mint(device="phone")) as phone,
            http_client(a, service_token()) as http,
        ):
            async with open_client(b.url, token=tv_token) as tv:
                await phone.wait_for(MessageType.DEVICE_JOINED)
                kicked = await http.delete("/v1/sessions/s1/devices/tv?revoke=true")
                closed = await tv.wait_closed()
            left = await phone.wait_for(MessageType.DEVICE_LEFT)
            async with open_client(b.url) as again:
                with pytest.raises(AuthFailed):
                    await again.authenticate(tv_token)
    assert kicked.status_code == 204
    assert closed.code == CloseCode.TOKEN_REVOKED
    assert left["payload"]["device_id"] == "tv"
