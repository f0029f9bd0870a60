"""Deep nesting (issue 12, item 4): refused at decode with an Error, socket open, no traceback.

On both stores: nothing deeper than the limit is stored, so every Resume and
snapshot of the session can still be encoded and served.
"""

from __future__ import annotations

import logging

import pytest
import trio

from syncbridge.client import Client
from syncbridge.protocol.codec import MAX_NESTING_DEPTH
from syncbridge.protocol.messages import MessageType

from ..conftest import mint
from . import open_resuming, open_servers, resume_auth
from .conftest import StoreUnderTest

BOUND = 15  # seconds


def deep(depth: int) -> str:
    return '{"n":' * depth + "0" + "}" * depth


async def refused(client: Client, frame: str) -> dict[str, object]:
    await client.send_raw(frame)
    reply = await client.next_message(timeout=5)
    assert reply["type"] == MessageType.ERROR
    payload = reply["payload"]
    assert isinstance(payload, dict)
    assert (payload["code"], payload["error_code"]) == (400, "NESTING_TOO_DEEP")
    assert payload["details"] == {"limit_depth": MAX_NESTING_DEPTH}
    return reply


@pytest.mark.parametrize("depth", [253, 255, 1024])
async def test_deep_nesting_is_refused_and_nothing_unservable_is_stored(
    store: StoreUnderTest, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="syncbridge")
    with trio.fail_after(BOUND):
        async with open_servers(store.settings()) as (server,):
            async with open_resuming(server.url) as w:
                await w.authenticate(mint(device="w"))
                assert await w.update("ok", {"shallow": [1]}) == 1
                value = '{"type":5,"payload":{"key":"deep","value":' + deep(depth) + "},"
                # Beyond 1024 levels in all, JSON parsing itself stops (orjson's
                # cap), so the correlation id cannot be read.
                readable = depth + 2 <= 1024
                reply = await refused(w, value + '"correlation_id":"u1"}')
                assert reply.get("correlation_id") == ("u1" if readable else None)
                hb = '{"type":1,"payload":{"client_time":' + deep(depth) + '},"correlation_id":"h"}'
                assert (await refused(w, hb)).get("correlation_id") == ("h" if readable else None)
                reply = await refused(w, '{"type":1,"correlation_id":' + deep(depth) + "}")
                assert "correlation_id" not in reply  # it could not have been echoed
                # The socket is still open and the session holds only what was accepted.
                assert await w.update("after", 2) == 2
                snap = await w.snapshot()
                assert snap["state_data"] == {"ok": {"shallow": [1]}, "after": 2}
            async with open_resuming(server.url) as r:
                _, resume = await resume_auth(r, mint(device="r"), 0)
                assert resume["payload"]["mode"] == "changes"
                assert [c["key"] for c in resume["payload"]["changes"]] == ["ok", "after"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_deepest_allowed_value_round_trips_through_resume(store: StoreUnderTest) -> None:
    value = 0
    for _ in range(MAX_NESTING_DEPTH - 2):  # message 1, payload 2, value 3..64
        value = [value]  # type: ignore[assignment]
    with trio.fail_after(BOUND):
        async with open_servers(store.settings()) as (server,):
            async with open_resuming(server.url) as w:
                await w.authenticate(mint(device="w"))
                assert await w.update("deep", value) == 1
            async with open_resuming(server.url) as r:
                _, resume = await resume_auth(r, mint(device="r"), 0)
                assert resume["payload"]["changes"][0]["value"] == value
                assert (await r.snapshot())["state_data"] == {"deep": value}
