"""Every socket sees acks and broadcasts in strictly increasing version order.

On Redis a writer's ack comes from the update script's reply while the other
devices' changes come through pub/sub: without care, an ack for version 5 can
overtake version 4 on its way through the relay (352 of 2 000 did, in the
hardening review). Memory and Redis, one process and two.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio

from syncbridge.client import Client
from syncbridge.protocol.messages import MessageType

from ..conftest import mint
from . import open_resuming, open_servers
from .conftest import StoreUnderTest

BOUND = 60
UPDATES = 300  # per writer


async def write_and_watch(client: Client, key: str, seen: list[int]) -> None:
    """Update ``key`` UPDATES times, one at a time; record every version seen, in order
    of arrival (own acks and others' broadcasts alike)."""
    for n in range(UPDATES):
        cid = f"{key}-{n}"
        await client.send(
            {
                "type": MessageType.STATE_UPDATE,
                "payload": {"key": key, "value": n},
                "correlation_id": cid,
            }
        )
        while True:
            message = await client.next_message(timeout=10)
            if message["type"] == MessageType.STATE_UPDATE:
                seen.append(message["payload"]["version"])
            if message.get("correlation_id") == cid:
                break


def assert_in_order(seen: list[int]) -> None:
    out_of_order = [(a, b) for a, b in itertools.pairwise(seen) if b <= a]
    assert not out_of_order, f"{len(out_of_order)} out of order, first {out_of_order[:3]}"


async def test_two_writers_each_see_acks_and_broadcasts_in_version_order(
    store: StoreUnderTest,
) -> None:
    # On Redis, writer a and the observer share one process, writer b has another.
    processes = 1 if store.redis is None else 2
    with trio.fail_after(BOUND):
        async with open_servers(
            store.settings(rate_limit=10_000, rate_burst=10_000), processes
        ) as servers:
            urls = [servers[0].url, servers[-1].url]
            async with (
                open_resuming(urls[0]) as a,
                open_resuming(urls[1]) as b,
                open_resuming(urls[0]) as observer,
            ):
                for client, device in ((a, "a"), (b, "b"), (observer, "o")):
                    await client.authenticate(mint(device=device))
                seen: dict[str, list[int]] = {"a": [], "b": []}
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write_and_watch, a, "ka", seen["a"])
                    nursery.start_soon(write_and_watch, b, "kb", seen["b"])
                observed: list[int] = []
                while len(observed) < 2 * UPDATES:
                    push: dict[str, Any] = await observer.wait_for(MessageType.STATE_UPDATE)
                    observed.append(push["payload"]["version"])
                snapshot = await observer.snapshot()
    assert snapshot["version"] == 2 * UPDATES
    assert observed == list(range(1, 2 * UPDATES + 1))  # gap-free, in order
    for versions in seen.values():
        assert_in_order(versions)
        assert len(versions) >= UPDATES  # every own ack, and whatever of the other's came
