from __future__ import annotations

import trio

from syncbridge.client import open_client
from syncbridge.protocol.messages import MessageType

from .conftest import RunningServer


async def test_two_devices_see_each_others_updates(server: RunningServer) -> None:
    async with (
        open_client(server.url, token=server.token(device="a")) as a,
        open_client(server.url, token=server.token(device="b")) as b,
    ):
        joined = await a.wait_for(MessageType.DEVICE_JOINED)
        assert joined["payload"]["device_id"] == "b"
        v1 = await a.update("theme", "dark")
        push = await b.wait_for(MessageType.STATE_UPDATE)
        assert push["payload"] == {
            "key": "theme",
            "value": "dark",
            "operation": "SET",
            "version": v1,
        }
        assert push["device_id"] == "a"
        v2 = await b.update("theme", "light")
        assert v2 == v1 + 1
        snap = await a.snapshot()
        assert snap["state_data"] == {"theme": "light"}
        assert snap["version"] == v2
    with trio.fail_after(5):
        await server.app.wait_no_connections()
    assert server.app.hub.session_count == 0
