"""GET/PUT /v1/sessions/{sid}/state: auth, problems, limits, versions, fan-out to devices."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from syncbridge.client import ServerError, open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer, mint, start_server
from . import apply_pushes, bearer, http_client, service_token
from .conftest import StoreUnderTest

BOUND = 20  # seconds; every test finishes far sooner


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].startswith("urn:syncbridge:problem:")
    assert body["title"]
    assert body["detail"]
    return body


async def test_state_of_never_written_session_is_version_zero(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with http_client(server, mint(session="fresh")) as http:
                response = await http.get("/v1/sessions/fresh/state")
        server.stop.set()
    assert response.status_code == 200
    assert response.headers["etag"] == '"0"'
    assert response.json() == {
        "session_id": "fresh",
        "version": 0,
        "state": {},
        "updated_at": None,
        "updated_by": None,
    }


async def test_state_requires_a_valid_bearer_token(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with http_client(server) as http:
            missing = await http.get("/v1/sessions/s1/state")
            scheme = await http.get(
                "/v1/sessions/s1/state", headers={"authorization": "Basic dTpw"}
            )
            forged = await http.get("/v1/sessions/s1/state", headers=bearer(mint(secret="x" * 40)))
            expired = await http.get("/v1/sessions/s1/state", headers=bearer(mint(ttl=-10)))
            put = await http.put("/v1/sessions/s1/state", json={"state": {"a": 1}})
    for response in (missing, scheme, forged, expired, put):
        assert_problem(response, 401, "UNAUTHENTICATED")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert "expired" in expired.json()["detail"]


async def test_state_device_token_reaches_only_its_session_without_leaking(
    server: RunningServer,
) -> None:
    with trio.fail_after(BOUND):
        async with http_client(server, mint(session="other", device="o")) as other:
            assert (
                await other.put("/v1/sessions/other/state", json={"state": {"x": 1}})
            ).is_success
        async with http_client(server, mint(session="mine")) as http:
            existing = await http.get("/v1/sessions/other/state")
            never = await http.get("/v1/sessions/never-written/state")
            write = await http.put("/v1/sessions/other/state", json={"state": {}})
    a = assert_problem(existing, 403, "FORBIDDEN")
    b = assert_problem(never, 403, "FORBIDDEN")
    assert a == b  # the same answer whether the session exists or not
    assert_problem(write, 403, "FORBIDDEN")


async def test_state_service_token_reaches_any_session(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with http_client(server, service_token()) as http:
                put = await http.put("/v1/sessions/any/state", json={"state": {"paid": True}})
                got = await http.get("/v1/sessions/any/state")
            # An admin token is an operator token, not a service token.
            admin = mint(roles=("admin",), session="ops")
            async with http_client(server, admin) as http:
                refused = await http.get("/v1/sessions/any/state")
        server.stop.set()
    assert put.status_code == 200
    assert got.json()["state"] == {"paid": True}
    assert got.json()["version"] == 1
    assert got.json()["updated_by"] == {"user_id": "backend", "device_id": "svc"}
    assert_problem(refused, 403, "FORBIDDEN")


async def test_state_put_reaches_devices_as_per_key_updates_equal_to_snapshot(
    store: StoreUnderTest,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with (
                open_client(server.url, token=mint(device="phone")) as phone,
                http_client(server, service_token()) as http,
            ):
                applied: dict[str, Any] = {}
                await phone.update("gone", 1)
                await phone.update("kept", "same")
                await phone.update("changed", "old")
                applied.update(gone=1, kept="same", changed="old")
                body = {"state": {"kept": "same", "changed": {"new": [1]}, "added": None}}
                put = await http.put("/v1/sessions/s1/state", json=body)
                assert put.status_code == 200, put.text
                assert put.json()["version"] == 4
                assert put.headers["etag"] == '"4"'
                pushes = [await phone.wait_for(MessageType.STATE_UPDATE) for _ in range(3)]
                version = apply_pushes(applied, pushes)
                snap = (await http.get("/v1/sessions/s1/state")).json()
                ws_snap = await phone.snapshot()
        server.stop.set()
    assert [p["payload"]["version"] for p in pushes] == [4, 4, 4]
    assert pushes[0]["payload"] == {
        "key": "gone",
        "value": None,
        "operation": "DELETE",
        "version": 4,
    }
    assert {p["device_id"] for p in pushes} == {"svc"}
    assert version == snap["version"] == ws_snap["version"] == 4
    assert applied == snap["state"] == ws_snap["state_data"] == body["state"]


async def test_state_put_of_an_equal_state_makes_no_version(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with http_client(server, mint()) as http:
            first = await http.put("/v1/sessions/s1/state", json={"state": {"a": 1}})
            again = await http.put("/v1/sessions/s1/state", json={"state": {"a": 1}})
    assert first.json()["version"] == again.json()["version"] == 1


async def test_state_put_with_stale_version_is_409_and_changes_nothing(
    store: StoreUnderTest,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with http_client(server, mint()) as http:
                await http.put("/v1/sessions/s1/state", json={"state": {"a": 1}})
                await http.put("/v1/sessions/s1/state", json={"state": {"a": 2}})
                header = await http.put(
                    "/v1/sessions/s1/state", json={"state": {"a": 3}}, headers={"if-match": '"1"'}
                )
                body = await http.put(
                    "/v1/sessions/s1/state", json={"state": {"a": 3}, "base_version": 1}
                )
                after = (await http.get("/v1/sessions/s1/state")).json()
                ok = await http.put(
                    "/v1/sessions/s1/state", json={"state": {"a": 4}}, headers={"if-match": '"2"'}
                )
                star = await http.put(
                    "/v1/sessions/s1/state", json={"state": {"a": 5}}, headers={"if-match": "*"}
                )
                bad = await http.put(
                    "/v1/sessions/s1/state", json={"state": {}}, headers={"if-match": 'W/"4"'}
                )
                both = await http.put(
                    "/v1/sessions/s1/state",
                    json={"state": {}, "base_version": 3},
                    headers={"if-match": '"4"'},
                )
        server.stop.set()
    for conflict in (header, body):
        problem = assert_problem(conflict, 409, "VERSION_CONFLICT")
        assert problem["current_version"] == 2
        assert problem["base_version"] == 1
        assert problem["state"] == {"a": 2}
    assert (after["version"], after["state"]) == (2, {"a": 2})
    assert ok.json()["version"] == 3
    assert star.json()["version"] == 4
    assert_problem(bad, 400, "INVALID_IF_MATCH")
    assert_problem(both, 400, "INVALID_IF_MATCH")


async def test_state_put_bad_bodies_each_get_their_answer(server: RunningServer) -> None:
    url = "/v1/sessions/s1/state"
    json_type = {"content-type": "application/json"}
    with trio.fail_after(BOUND):
        async with http_client(server, mint()) as http:
            answers = {
                "json": await http.put(url, content=b'{"state": ', headers=json_type),
                "media": await http.put(url, content=b"{}", headers={"content-type": "text/plain"}),
                "array": await http.put(url, json=[1]),
                "missing": await http.put(url, json={}),
                "type": await http.put(url, json={"state": [1]}),
                "version": await http.put(url, json={"state": {}, "base_version": "1"}),
                "negative": await http.put(url, json={"state": {}, "base_version": -1}),
                "unknown": await http.put(url, json={"state": {}, "sate": 1}),
                "key": await http.put(url, json={"state": {"": 1}}),
                "deep": await http.put(
                    url,
                    content=b'{"state":{"a":' + b"[" * 70 + b"]" * 70 + b"}}",
                    headers=json_type,
                ),
                "large": await http.put(url, json={"state": {"a": "x" * 1_200_000}}),
            }
            after = (await http.get(url)).json()
    assert_problem(answers["json"], 400, "INVALID_JSON")
    assert_problem(answers["media"], 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_problem(answers["array"], 422, "INVALID_BODY")
    assert "state" in assert_problem(answers["missing"], 422, "INVALID_BODY")["detail"]
    assert "$.state" in assert_problem(answers["type"], 422, "INVALID_BODY")["detail"]
    assert_problem(answers["version"], 422, "INVALID_BODY")
    assert "base_version" in assert_problem(answers["negative"], 422, "INVALID_BODY")["detail"]
    assert assert_problem(answers["unknown"], 422, "UNKNOWN_FIELD")["fields"] == ["sate"]
    assert_problem(answers["key"], 422, "INVALID_STATE")
    assert_problem(answers["deep"], 400, "NESTING_TOO_DEEP")
    assert assert_problem(answers["large"], 413, "BODY_TOO_LARGE")["limit_bytes"] == 1_100_000
    assert after["version"] == 0


async def test_state_put_over_state_limits_is_413_and_changes_nothing(
    store: StoreUnderTest,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings(max_state_bytes=100, max_keys=2))
        with trio.fail_after(BOUND):
            async with http_client(server, mint()) as http:
                url = "/v1/sessions/s1/state"
                await http.put(url, json={"state": {"a": 1}})
                big = await http.put(url, json={"state": {"a": "x" * 200}})
                keys = await http.put(url, json={"state": {"a": 1, "b": 2, "c": 3}})
                after = (await http.get(url)).json()
        server.stop.set()
    assert assert_problem(big, 413, "STATE_TOO_LARGE")["limit_bytes"] == 100
    assert assert_problem(keys, 413, "TOO_MANY_KEYS")["limit_keys"] == 2
    assert (after["version"], after["state"]) == (1, {"a": 1})


async def test_state_writes_are_rate_limited_per_token(server_factory: Any) -> None:
    server = await server_factory(http_rate_limit=0.01, http_rate_burst=2)
    with trio.fail_after(BOUND):
        async with http_client(server, mint()) as http:
            codes = [
                (await http.put("/v1/sessions/s1/state", json={"state": {"n": i}})).status_code
                for i in range(3)
            ]
            limited = await http.put("/v1/sessions/s1/state", json={"state": {"n": 9}})
            read = await http.get("/v1/sessions/s1/state")  # reads are not charged
        async with http_client(server, mint()) as other:  # another token: its own budget
            fresh = await other.put("/v1/sessions/s1/state", json={"state": {"n": 5}})
    assert codes == [200, 200, 429]
    assert_problem(limited, 429, "RATE_LIMITED")
    assert int(limited.headers["retry-after"]) >= 1
    assert read.json()["state"] == {"n": 1}
    assert fresh.status_code == 200


async def test_state_unknown_routes_and_methods_are_problems(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with http_client(server, mint()) as http:
            missing = await http.get("/v1/nothing")
            method = await http.post("/v1/sessions/s1/state", json={})
    assert_problem(missing, 404, "NOT_FOUND")
    problem = assert_problem(method, 405, "METHOD_NOT_ALLOWED")
    assert "PUT" in method.headers["allow"]
    assert "GET" in problem["detail"]


async def test_ws_update_with_base_version_conflicts_or_applies(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with open_client(server.url, token=mint()) as client:
                await client.update("a", 1)
                with pytest.raises(ServerError) as conflict:
                    await client.request(
                        MessageType.STATE_UPDATE, {"key": "a", "value": 2, "base_version": 0}
                    )
                ok = await client.request(
                    MessageType.STATE_UPDATE, {"key": "a", "value": 3, "base_version": 1}
                )
                lww = await client.request(
                    MessageType.STATE_UPDATE, {"key": "a", "value": 4, "base_version": None}
                )
                snap = await client.snapshot()
        server.stop.set()
    error = conflict.value.raw["payload"]
    assert (error["code"], error["error_code"]) == (409, "VERSION_CONFLICT")
    assert error["details"] == {"current_version": 1, "base_version": 0}
    assert ok["payload"]["version"] == 2
    assert lww["payload"]["version"] == 3
    assert (snap["version"], snap["state_data"]) == (3, {"a": 4})


async def test_state_concurrent_http_and_ws_writers_keep_one_gapless_sequence(
    store: StoreUnderTest,
) -> None:
    writes = 15
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND * 2):
            async with (
                open_client(server.url, token=mint(device="watcher")) as watcher,
                open_client(server.url, token=mint(device="writer")) as writer,
                http_client(server, service_token()) as http,
            ):

                async def ws_writes() -> None:
                    for i in range(writes):
                        await writer.update(f"ws{i % 3}", i)

                async def http_writes() -> None:
                    for i in range(writes):
                        state = {f"h{j}": i for j in range(i % 4)}
                        response = await http.put("/v1/sessions/s1/state", json={"state": state})
                        assert response.status_code == 200, response.text

                async with trio.open_nursery() as writers:
                    writers.start_soon(ws_writes)
                    writers.start_soon(http_writes)
                # Several pushes share a multi-key write's version: a last write
                # after the others marks the end of the stream for the watcher.
                last = await writer.update("done", True)
                pushes: list[dict[str, Any]] = []
                while not pushes or pushes[-1]["payload"]["version"] < last:
                    pushes.append(await watcher.wait_for(MessageType.STATE_UPDATE))
                final = (await http.get("/v1/sessions/s1/state")).json()
        server.stop.set()
    versions = [p["payload"]["version"] for p in pushes]
    assert versions == sorted(versions)  # in version order
    assert sorted(set(versions)) == list(range(1, final["version"] + 1))  # no gap
    applied: dict[str, Any] = {}
    apply_pushes(applied, pushes)
    assert applied == final["state"]
    assert orjson.dumps(applied, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        final["state"], option=orjson.OPT_SORT_KEYS
    )
