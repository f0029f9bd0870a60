"""The event stream is bounded: unread events collapse into one Resynced, or the client waits."""

from __future__ import annotations

import trio
import trio.testing

from syncbridge.client.mirror import Change, Mirror, Resynced
from syncbridge.client.sync_events import EventBuffer


class Owner:
    failure: BaseException | None = None


def change(version: int) -> Change:
    return Change(key="k", value=version, operation="SET", version=version)


async def test_event_buffer_overflow_collapses_into_one_resynced() -> None:
    mirror = Mirror(state={"k": 3}, version=3)
    buffer = EventBuffer(mirror, max_events=2, wait=False)
    await buffer.emit([change(1), change(2), change(3)])
    buffer.close()
    events = [e async for e in buffer.iterate(Owner())]
    assert events == [Resynced(state={"k": 3}, version=3, reason="overflow")]


async def test_event_buffer_wait_mode_blocks_the_producer_until_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = EventBuffer(Mirror(), max_events=1, wait=True)
    done = trio.Event()

    async def produce() -> None:
        await buffer.emit([change(1), change(2)])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # the second event waits for room
        reader = buffer.iterate(Owner())
        assert await reader.__anext__() == change(1)
        await done.wait()
        assert await reader.__anext__() == change(2)
