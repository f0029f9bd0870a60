"""PATCH /v1/sessions/{sid}/state: RFC 6902, atomic, one version, limits on the result."""

from __future__ import annotations

from typing import Any

import trio

from syncbridge.client import open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer, mint, start_server
from . import apply_pushes, http_client
from .conftest import StoreUnderTest
from .test_state_api_e2e import assert_problem

BOUND = 20
URL = "/v1/sessions/s1/state"
PATCH = {"content-type": "application/json-patch+json"}


async def patch(http: Any, ops: Any, **headers: str) -> Any:
    return await http.patch(URL, json=ops, headers={**PATCH, **headers})


async def test_patch_all_six_operations_as_one_version_reach_devices(
    store: StoreUnderTest,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with (
                open_client(server.url, token=mint(device="phone")) as phone,
                http_client(server, mint(device="backend")) as http,
            ):
                start = {"profile": {"name": "a", "tags": ["x"]}, "old": 1, "keep": True}
                await http.put(URL, json={"state": start})
                applied = {}
                ops = [
                    {"op": "test", "path": "/keep", "value": True},
                    {"op": "add", "path": "/profile/tags/-", "value": "y"},
                    {"op": "replace", "path": "/profile/name", "value": "b"},
                    {"op": "copy", "from": "/profile/name", "path": "/copied"},
                    {"op": "move", "from": "/old", "path": "/moved"},
                    {"op": "remove", "path": "/keep"},
                ]
                response = await patch(http, ops, **{"if-match": '"1"'})
                assert response.status_code == 200, response.text
                pushes = [await phone.wait_for(MessageType.STATE_UPDATE) for _ in range(3 + 5)]
                got = (await http.get(URL)).json()
        server.stop.set()
    expected = {"profile": {"name": "b", "tags": ["x", "y"]}, "copied": "b", "moved": 1}
    assert response.json()["version"] == 2
    assert response.json()["state"] == expected
    assert (got["version"], got["state"]) == (2, expected)
    apply_pushes(applied, pushes)
    assert applied == expected
    assert {p["payload"]["version"] for p in pushes[3:]} == {2}


async def test_patch_failed_test_is_409_and_nothing_changes(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with http_client(server, mint()) as http:
                await http.put(URL, json={"state": {"a": 1, "b": 2}})
                ops = [
                    {"op": "remove", "path": "/a"},
                    {"op": "test", "path": "/b", "value": 3},
                ]
                failed = await patch(http, ops)
                typed = await patch(http, [{"op": "test", "path": "/a", "value": True}])
                after = (await http.get(URL)).json()
        server.stop.set()
    assert_problem(failed, 409, "PATCH_TEST_FAILED")
    assert_problem(typed, 409, "PATCH_TEST_FAILED")  # true is not 1
    assert (after["version"], after["state"]) == (1, {"a": 1, "b": 2})


async def test_patch_bad_paths_and_documents_are_422(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with http_client(server, mint()) as http:
            await http.put(URL, json={"state": {"a": {"b": 1}}})
            answers = [
                await patch(http, [{"op": "remove", "path": "/missing"}]),
                await patch(http, [{"op": "add", "path": "/a/x/y", "value": 1}]),
                await patch(http, [{"op": "add", "path": "no-slash", "value": 1}]),
                await patch(http, [{"op": "bogus", "path": "/a"}]),
                await patch(http, [{"op": "add", "value": 1}]),
                await patch(http, [{"op": "add", "path": 5, "value": 1}]),
                await patch(http, [{"op": "replace", "path": "", "value": [1]}]),
                await patch(http, [{"op": "move", "from": "/a", "path": "/a/b/c"}]),
                await patch(http, {"op": "add"}),
                await patch(http, [1]),
                await patch(http, [{"op": "add", "path": "/", "value": 1}]),  # empty key
            ]
            media = await http.patch(URL, json=[], headers={"content-type": "application/json"})
            after = (await http.get(URL)).json()
    codes = [a.status_code for a in answers]
    assert codes == [422] * len(answers), [a.text for a in answers]
    for answer in answers[:-1]:
        assert_problem(answer, 422, "INVALID_PATCH")
    assert_problem(answers[-1], 422, "INVALID_STATE")
    assert_problem(media, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert after["version"] == 1


async def test_patch_limits_apply_to_the_result(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings(max_state_bytes=100, max_keys=2))
        with trio.fail_after(BOUND):
            async with http_client(server, mint()) as http:
                await http.put(URL, json={"state": {"a": [1]}})
                big = await patch(http, [{"op": "add", "path": "/a/-", "value": "x" * 120}])
                keys = await patch(
                    http,
                    [
                        {"op": "add", "path": "/b", "value": 1},
                        {"op": "add", "path": "/c", "value": 2},
                    ],
                )
                deep = await patch(http, [{"op": "add", "path": "/d", "value": _nested(70)}])
                after = (await http.get(URL)).json()
        server.stop.set()
    assert_problem(big, 413, "STATE_TOO_LARGE")
    assert_problem(keys, 413, "TOO_MANY_KEYS")
    assert deep.status_code == 400
    assert (after["version"], after["state"]) == (1, {"a": [1]})


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_patch_with_stale_if_match_is_409_with_current_state(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with http_client(server, mint()) as http:
            await http.put(URL, json={"state": {"n": 1}})
            await patch(http, [{"op": "replace", "path": "/n", "value": 2}])
            stale = await patch(
                http, [{"op": "replace", "path": "/n", "value": 3}], **{"if-match": '"1"'}
            )
            noop = await patch(http, [{"op": "test", "path": "/n", "value": 2}])
    problem = assert_problem(stale, 409, "VERSION_CONFLICT")
    assert (problem["current_version"], problem["state"]) == (2, {"n": 2})
    assert noop.json()["version"] == 2  # a patch that changes nothing makes no version
