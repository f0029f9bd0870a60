"""Real processes: two ``python -m syncbridge`` on one Redis, one of them SIGKILLed.

A process that dies without cleaning up stops refreshing its devices'
presence; the surviving process reaps them after PRESENCE_TTL and tells its
devices they left.
"""

from __future__ import annotations

import signal

import trio

from syncbridge.client import Client, open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import SECRET, mint
from ..process.proc import run_server
from ..redis_harness import RedisServer
from . import updates_until

BOUND = 30  # seconds; two process start-ups and one presence expiry fit easily
PRESENCE_TTL = 1.5
# The survivor reaps every PRESENCE_TTL / 3; allow as much again for a busy machine.
LEAVE_BOUND = PRESENCE_TTL + PRESENCE_TTL / 3 + 2.0


async def online(client: Client) -> dict[str, bool]:
    listed = await client.devices()
    return {d["device_id"]: d["is_online"] for d in listed["devices"]}


async def test_killed_process_devices_leave_and_survivor_keeps_working(
    redis_server: RedisServer,
) -> None:
    # PING_INTERVAL stays at its default: nothing here depends on WebSocket pings,
    # and a ping crossing the client's own Close now and then makes trio-websocket
    # fail (python-trio/trio-websocket#184).
    env = {"JWT_SECRET": SECRET, "REDIS_URL": redis_server.url, "PRESENCE_TTL": f"{PRESENCE_TTL}s"}
    with trio.fail_after(BOUND):
        async with (
            run_server(env=env) as doomed,
            run_server(env=env) as survivor,
            open_client(survivor.ws_url, token=mint(user="yan", device="y")) as y,
            open_client(doomed.ws_url, token=mint(user="xia", device="x")) as x,
        ):
            joined = await y.wait_for(MessageType.DEVICE_JOINED)
            assert joined["payload"]["device_id"] == "x"
            assert await x.update("from-x", {"before": "the kill"}) == 1
            assert [p["device_id"] for p in await updates_until(y, 1)] == ["x"]
            assert await online(y) == {"x": True, "y": True}

            assert await doomed.stop(signal.SIGKILL) == -signal.SIGKILL
            killed_at = trio.current_time()
            left = await y.wait_for(MessageType.DEVICE_LEFT, timeout=LEAVE_BOUND)
            assert trio.current_time() - killed_at <= LEAVE_BOUND
            assert left["payload"]["device_id"] == "x"
            assert left["payload"]["user_id"] == "xia"
            assert (left["session_id"], left["device_id"]) == ("s1", "x")
            assert (await x.wait_closed()).code != 1000  # the socket just broke

            # The survivor serves the session as before.
            assert await y.update("from-y", True) == 2
            snap = await y.snapshot()
            assert snap["version"] == 2
            assert snap["state_data"] == {"from-x": {"before": "the kill"}, "from-y": True}
            assert await online(y) == {"x": False, "y": True}
            # Announced once: nothing else about x arrives.
            await y.heartbeat("probe")
            presence = (MessageType.DEVICE_JOINED, MessageType.DEVICE_LEFT)
            assert [m for m in y.pending() if m["type"] in presence] == []
