"""The console on Redis: a session's state, changes and devices include other processes'."""

from __future__ import annotations

import trio

from syncbridge.client import open_client

from ..conftest import mint
from ..console_http import open_event_stream
from ..redis_harness import RedisServer
from . import open_servers, redis_settings

BOUND = 20  # seconds


async def test_console_session_feed_shows_changes_and_devices_of_other_processes(
    redis_server: RedisServer,
) -> None:
    admin = mint(user="ops", device="console", session="ops", roles=("admin",))
    path = "/console/api/session?session_id=s1"
    with trio.fail_after(BOUND):
        async with (
            open_servers(redis_settings(redis_server.url), 2) as (a, b),
            open_client(a.url, token=mint(device="on-a")) as on_a,
            open_event_stream(b.http, path, admin) as feed,
        ):
            # Nothing of session s1 is connected to B: all it shows comes from Redis.
            devices = await feed.wait_for("devices", lambda d: len(d["devices"]) == 1)
            version = await on_a.update("theme", "dark")
            changes = await feed.wait_for("changes")
            state = await feed.wait_for("state")
    [device] = devices["devices"]
    assert device["device_id"] == "on-a"
    assert device["connections"] == []  # none on this process
    assert [(c["version"], c["device_id"], c["key"]) for c in changes] == [
        (version, "on-a", "theme")
    ]
    assert state == {
        "version": version,
        "updated_at": state["updated_at"],
        "state": {"theme": "dark"},
    }
