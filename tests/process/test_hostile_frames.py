"""Hostile frames against the real server process: it survives, bystanders are unaffected.

Regression for the crash found in the hardening review: an *unauthenticated* client
sent a binary message over the 512 KiB limit and then a text frame (or the
reverse); hypercorn kept its half-filled message buffer after answering 1009, the
frame of the other type raised inside hypercorn and ended the whole process.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from syncbridge.client import open_client

from .proc import http_get_json, run_server
from .test_server_process import ENV, FAST, assert_no_traceback, mint

OVER_LIMIT = 600 * 1024  # the default MAX_MESSAGE_BYTES is 512 KiB


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(b"\0" * OVER_LIMIT, "then text", id="binary-then-text"),
        pytest.param("t" * OVER_LIMIT, b"then binary", id="text-then-binary"),
    ],
)
async def test_oversize_then_other_type_leaves_process_and_bystander_alive(
    first: str | bytes, second: str | bytes
) -> None:
    async with run_server(env={**ENV, **FAST}) as server:
        with trio.fail_after(20):
            async with open_client(server.ws_url, token=mint("bystander")) as bystander:
                for _attempt in range(3):  # the crash needed one try; be thorough
                    async with open_websocket_url(
                        server.ws_url, max_message_size=2**20
                    ) as attacker:
                        with contextlib.suppress(ConnectionClosed):
                            await attacker.send_message(first)
                            await attacker.send_message(second)
                        with contextlib.suppress(ConnectionClosed):
                            while True:
                                await attacker.get_message()
                    assert attacker.closed is not None
                    assert attacker.closed.code == 1009
                version = await bystander.update("still", "here")
                assert version == 1
                status, body = await http_get_json(server.port, "/health/live")
                assert body == {"status": "alive"}
                assert status == 200
            assert server.process.returncode is None
            assert await server.stop() == 0
    assert_no_traceback(server)
