"""The Python HTTP client (syncbridge.http_client) against a live server, memory and Redis."""

from __future__ import annotations

import pytest
import trio

from syncbridge.client import open_client
from syncbridge.errors import CloseCode
from syncbridge.http_client import ApiError, HttpClient, VersionConflictError

from ..conftest import mint, start_server
from . import service_token
from .conftest import StoreUnderTest

BOUND = 20


async def test_http_client_drives_a_session_while_devices_stay_connected(
    store: StoreUnderTest,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, store.settings())
        with trio.fail_after(BOUND):
            async with (
                HttpClient(server.http, service_token()) as backend,
                HttpClient(server.http, mint(device="phone")) as phone_api,
                HttpClient(server.http, mint(device="tv")) as tv_api,
                open_client(server.url, token=mint(device="tv")) as tv,
            ):
                first = await backend.put_state("s1", {"a": 1})
                patched = await backend.patch_state(
                    "s1", [{"op": "add", "path": "/b", "value": 2}], base_version=1
                )
                with pytest.raises(VersionConflictError) as conflict:
                    await backend.put_state("s1", {}, base_version=1)
                history = await backend.history("s1", since=1)
                point = await backend.create_snapshot("s1", "two keys")
                assert [p["id"] for p in await backend.list_snapshots("s1")] == [point["id"]]
                assert (await backend.get_snapshot("s1", point["id"]))["state"] == {"a": 1, "b": 2}
                await backend.put_state("s1", {})
                restored = await backend.restore_snapshot("s1", point["id"])
                online = await backend.devices("s1")
                ticket = await phone_api.create_handoff("s1", ttl=60)
                claimed = await tv_api.claim_handoff(ticket["ticket"], "tv-2")
                with pytest.raises(ApiError) as gone:
                    await tv_api.claim_handoff(ticket["ticket"], "tv-2")
                await backend.remove_device("s1", "tv")
                closed = await tv.wait_closed()
                revoked = await backend.revoke_device("s1", "phone")
                with pytest.raises(ApiError) as refused:
                    await phone_api.get_state("s1")
                await backend.delete_session("s1")
                after = await backend.get_state("s1")
        server.stop.set()
    assert (first["version"], patched["version"]) == (1, 2)
    assert (conflict.value.current_version, conflict.value.state) == (2, {"a": 1, "b": 2})
    assert [c["key"] for c in history["changes"]] == ["b"]
    assert (restored["version"], restored["state"]) == (4, {"a": 1, "b": 2})
    assert [d["device_id"] for d in online] == ["tv"]
    assert (claimed["session_id"], claimed["device_id"], claimed["version"]) == ("s1", "tv-2", 4)
    assert (gone.value.status, gone.value.code) == (410, "HANDOFF_GONE")
    assert closed.code == CloseCode.DEVICE_REMOVED
    assert revoked["revoked"] is True
    assert (refused.value.status, refused.value.code) == (401, "UNAUTHENTICATED")
    assert after["version"] == 0
