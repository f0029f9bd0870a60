"""Snapshots (labelled restore points): create, list, read, restore as one broadcast version."""

from __future__ import annotations

from typing import Any

import trio

from syncbridge.client import open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import mint, start_server
from . import apply_pushes, http_client, service_token
from .conftest import StoreUnderTest
from .test_state_api_e2e import assert_problem

BOUND = 20
SNAPS = "/v1/sessions/s1/snapshots"


async def test_snapshots_create_list_get_bounded(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings(snapshots_per_session=2))
        with trio.fail_after(BOUND):
            async with http_client(server, mint(device="laptop")) as http:
                await http.put("/v1/sessions/s1/state", json={"state": {"a": 1}})
                first = await http.post(SNAPS, json={"label": "before sale"})
                await http.put("/v1/sessions/s1/state", json={"state": {"a": 2}})
                second = await http.post(SNAPS)  # no body: no label
                third = await http.post(SNAPS, json={"label": "third"})
                listed = (await http.get(SNAPS)).json()
                one = await http.get(second.headers["location"])
                dropped = await http.get(f"{SNAPS}/{first.json()['id']}")
                bad = await http.post(SNAPS, json={"label": 5})
                long = await http.post(SNAPS, json={"label": "x" * 300})
            async with http_client(server, mint(session="other")) as other:
                forbidden = await other.get(SNAPS)
        server.stop.set()
    assert first.status_code == 201
    desc = first.json()
    assert (desc["version"], desc["label"]) == (1, "before sale")
    assert desc["created_by"] == {"user_id": "u1", "device_id": "laptop"}
    assert len(desc["id"]) == 16
    assert second.json()["label"] == ""
    assert [s["id"] for s in listed["snapshots"]] == [third.json()["id"], second.json()["id"]]
    assert one.json()["state"] == {"a": 2}
    assert one.json()["version"] == 2
    assert_problem(dropped, 404, "SNAPSHOT_NOT_FOUND")
    assert_problem(bad, 422, "INVALID_BODY")
    assert_problem(long, 422, "INVALID_BODY")
    assert_problem(forbidden, 403, "FORBIDDEN")


async def test_snapshot_restore_is_one_new_broadcast_version(store: StoreUnderTest) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with (
                open_client(server.url, token=mint(device="phone")) as phone,
                http_client(server, service_token()) as http,
            ):
                await http.put("/v1/sessions/s1/state", json={"state": {"a": 1, "b": [1]}})
                point = (await http.post(SNAPS, json={"label": "good"})).json()
                await http.put("/v1/sessions/s1/state", json={"state": {"c": 3}})
                stale = await http.post(
                    f"{SNAPS}/{point['id']}/restore", headers={"if-match": '"1"'}
                )
                restored = await http.post(
                    f"{SNAPS}/{point['id']}/restore", headers={"if-match": '"2"'}
                )
                missing = await http.post(f"{SNAPS}/nope/restore")
                pushes = [await phone.wait_for(MessageType.STATE_UPDATE) for _ in range(2 + 3 + 3)]
                snap = await phone.snapshot()
        server.stop.set()
    assert_problem(stale, 409, "VERSION_CONFLICT")
    assert restored.status_code == 200, restored.text
    assert (restored.json()["version"], restored.json()["state"]) == (3, {"a": 1, "b": [1]})
    assert_problem(missing, 404, "SNAPSHOT_NOT_FOUND")
    applied: dict[str, Any] = {}
    assert apply_pushes(applied, pushes) == 3
    assert {p["payload"]["version"] for p in pushes[5:]} == {3}
    assert applied == snap["state_data"] == {"a": 1, "b": [1]}
