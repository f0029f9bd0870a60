"""Hub and fan-out with bounded backpressure: Outbox, deliver(), Hub registry and publish.

Timing runs on trio's MockClock (autojump): waiting for a full outbox costs
exactly the slow-consumer timeout of mock time, and nothing else takes any.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from syncbridge.errors import CloseCode
from syncbridge.hub import Hub, deliver
from syncbridge.protocol.messages import MessageType

from .fake_transport import (
    delivered_at,
    make_app,
    publish_updates,
    pushes,
    session_of,
    still_open_for,
)
from .outboxes import ChannelOutbox


class Box:
    """An Outbox over a fresh channel, with its receiving end and a record of slow closes."""

    def __init__(self, size: int = 2, label: str = "") -> None:
        send, self.receive = trio.open_memory_channel[str](size)
        self.slow_closes = 0
        self.outbox = ChannelOutbox(send, on_slow=self._on_slow, label=label)
        self.send = send

    def _on_slow(self) -> None:
        self.slow_closes += 1

    def fill(self) -> None:
        while self.outbox.offer("filler"):
            pass

    def drain(self) -> list[str]:
        frames = []
        while True:
            try:
                frames.append(self.receive.receive_nowait())
            except trio.WouldBlock:
                return frames


# -- Outbox -------------------------------------------------------------------------------


def test_outbox_offer_queues_until_full() -> None:
    box = Box(size=2)
    assert box.outbox.depth == 0
    assert box.outbox.offer("1")
    assert box.outbox.offer("2")
    assert box.outbox.depth == 2
    assert not box.outbox.offer("3")
    assert box.outbox.depth == 2
    assert box.drain() == ["1", "2"]
    assert box.outbox.depth == 0


def test_outbox_offer_to_closed_outbox_swallows_frame() -> None:
    box = Box(size=1)
    box.send.close()  # the connection is going away
    assert box.outbox.offer("lost")
    other = Box(size=1)
    other.receive.close()  # the writer has gone
    assert other.outbox.offer("lost")
    assert box.slow_closes == other.slow_closes == 0


async def test_outbox_wait_send_waits_for_room(autojump_clock: trio.testing.MockClock) -> None:
    box = Box(size=1)
    box.outbox.offer("first")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.outbox.wait_send, "second")
        await trio.testing.wait_all_tasks_blocked()
        assert box.outbox.depth == 1  # still waiting
        assert await box.receive.receive() == "first"
    assert box.drain() == ["second"]


async def test_outbox_wait_send_returns_when_outbox_closed_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = Box(size=1)
    box.fill()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.outbox.wait_send, "late")
        await trio.testing.wait_all_tasks_blocked()
        box.receive.close()  # the writer ends while a publisher waits: no error, no block
    assert trio.current_time() == 0


def test_outbox_close_slow_calls_owner() -> None:
    box = Box()
    box.outbox.close_slow()
    assert box.slow_closes == 1


# -- deliver() ----------------------------------------------------------------------------


async def test_deliver_with_room_everywhere_does_not_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    boxes = [Box() for _ in range(3)]
    assert await deliver([b.outbox for b in boxes], "f", timeout=5) == 0
    assert trio.current_time() == 0
    assert [b.drain() for b in boxes] == [["f"], ["f"], ["f"]]


async def test_deliver_fast_outbox_served_before_waiting_for_full_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow, fast = Box(size=1), Box(size=1)
    slow.fill()
    got_at: list[float] = []

    async def fast_reader() -> None:
        assert await fast.receive.receive() == "f"
        got_at.append(trio.current_time())  # when it arrived, not when we began to wait

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fast_reader)
        closed = await deliver([slow.outbox, fast.outbox], "f", timeout=5)
    assert closed == 1
    assert got_at == [0]
    assert trio.current_time() == pytest.approx(5)
    assert (slow.slow_closes, fast.slow_closes) == (1, 0)
    assert slow.drain() == ["filler"]  # the frame was not forced in


async def test_deliver_outbox_drained_in_time_gets_frame_and_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = Box(size=1)
    box.fill()
    closed: list[int] = []
    done = trio.Event()

    async def publish() -> None:
        closed.append(await deliver([box.outbox], "f", timeout=5))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish)
        with trio.move_on_after(2):
            await done.wait()
        assert closed == []  # still waiting for room after 2 s
        assert await box.receive.receive() == "filler"  # the reader catches up
    assert closed == [0]
    assert trio.current_time() == pytest.approx(2)
    assert box.drain() == ["f"]
    assert box.slow_closes == 0


async def test_deliver_full_outboxes_share_one_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    boxes = [Box(size=1) for _ in range(3)]
    for b in boxes:
        b.fill()
    assert await deliver([b.outbox for b in boxes], "f", timeout=5) == 3
    assert trio.current_time() == pytest.approx(5)  # not 15
    assert [b.slow_closes for b in boxes] == [1, 1, 1]


async def test_deliver_waits_for_each_full_outbox_under_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first, second = Box(size=1), Box(size=1)
    first.fill()
    second.fill()
    done = trio.Event()

    async def publish() -> None:
        assert await deliver([first.outbox, second.outbox], "f", timeout=5) == 0
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish)
        for box, at in ((first, 1), (second, 3)):  # drained one after the other, in time
            with trio.move_on_at(at):
                await done.wait()
            assert not done.is_set()
            assert await box.receive.receive() == "filler"
    assert trio.current_time() == pytest.approx(3)
    assert (first.drain(), second.drain()) == (["f"], ["f"])
    assert first.slow_closes == second.slow_closes == 0


async def test_deliver_last_chance_reoffer_spares_outbox_that_drained(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stuck, recovering = Box(size=1), Box(size=1)
    stuck.fill()
    recovering.fill()
    closed: list[int] = []
    done = trio.Event()

    async def publish() -> None:
        # deliver() waits on `stuck` first; `recovering` drains while it waits.
        closed.append(await deliver([stuck.outbox, recovering.outbox], "f", timeout=5))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish)
        with trio.move_on_after(1):
            await done.wait()
        assert await recovering.receive.receive() == "filler"
    assert closed == [1]
    assert trio.current_time() == pytest.approx(5)
    assert (stuck.slow_closes, recovering.slow_closes) == (1, 0)
    assert recovering.drain() == ["f"]


# -- Hub registry --------------------------------------------------------------------------


def test_hub_subscribe_unsubscribe_and_outboxes_exclude() -> None:
    hub = Hub(slow_consumer_timeout=5)
    a, b, c = Box(label="a"), Box(label="b"), Box(label="c")
    assert hub.subscribe("s1", 1, a.outbox, device_id="d1")  # the session's first here
    assert not hub.subscribe("s1", 2, b.outbox, device_id="d2")
    assert hub.subscribe("s2", 3, c.outbox, device_id="d1")
    assert (hub.session_count, hub.subscriber_count) == (2, 3)
    assert sorted(hub) == ["s1", "s2"]
    assert [o.label for o in hub.outboxes("s1")] == ["a", "b"]
    assert [o.label for o in hub.outboxes("s1", exclude=(1,))] == ["b"]
    assert [o.label for o in hub.outboxes("s1", exclude_device="d2")] == ["a"]
    assert hub.outboxes("s1", exclude={1, 2}) == []
    assert hub.outboxes("nobody") == []

    assert not hub.unsubscribe("s1", 1)
    assert [o.label for o in hub.outboxes("s1")] == ["b"]
    assert not hub.unsubscribe("s1", 1)  # twice: harmless
    assert not hub.unsubscribe("nobody", 9)
    assert hub.session_count == 2


def test_hub_session_forgotten_when_last_subscriber_leaves() -> None:
    hub = Hub(slow_consumer_timeout=5)
    hub.subscribe("s1", 1, Box().outbox)
    hub.subscribe("s1", 2, Box().outbox)
    assert not hub.unsubscribe("s1", 1)
    assert hub.session_count == 1
    assert hub.unsubscribe("s1", 2)  # the last one
    assert hub.session_count == 0
    assert hub.subscriber_count == 0
    assert list(hub) == []


def test_hub_subscribe_same_key_replaces_outbox() -> None:
    hub = Hub(slow_consumer_timeout=5)
    hub.subscribe("s1", 1, Box(label="old").outbox)
    hub.subscribe("s1", 1, Box(label="new").outbox)
    assert [o.label for o in hub.outboxes("s1")] == ["new"]


def test_hub_close_session_closes_every_local_connection_as_slow() -> None:
    hub = Hub(slow_consumer_timeout=5)
    boxes = [Box(), Box()]
    for key, box in enumerate(boxes):
        hub.subscribe("s1", key, box.outbox)
    other = Box()
    hub.subscribe("s2", 9, other.outbox)
    assert hub.close_session("s1") == 2
    assert [b.slow_closes for b in boxes] == [1, 1]
    assert other.slow_closes == 0
    assert hub.slow_consumers_closed == 2


# -- Hub.publish / Hub.send -------------------------------------------------------------------


async def test_hub_publish_reaches_session_except_excluded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(slow_consumer_timeout=5)
    a, b, other = Box(), Box(), Box()
    hub.subscribe("s1", 1, a.outbox, device_id="d1")
    hub.subscribe("s1", 2, b.outbox, device_id="d2")
    hub.subscribe("s2", 3, other.outbox, device_id="d3")
    await hub.publish("s1", "hello", exclude=(1,))
    await hub.publish("s1", "to others of d2", exclude_device="d2")
    await hub.publish("unknown", "nobody hears")
    assert (a.drain(), b.drain(), other.drain()) == (["to others of d2"], ["hello"], [])
    assert hub.slow_consumers_closed == 0


@pytest.mark.parametrize(("timeout", "waited"), [(None, 5), (1, 1), (10, 5)])
async def test_hub_publish_timeout_only_shortens_the_wait(
    autojump_clock: trio.testing.MockClock, timeout: float | None, waited: float
) -> None:
    hub = Hub(slow_consumer_timeout=5)
    slow = Box(size=1)
    slow.fill()
    hub.subscribe("s1", 1, slow.outbox)
    await hub.publish("s1", "f", timeout=timeout)
    assert trio.current_time() == pytest.approx(waited)
    assert slow.slow_closes == 1
    assert hub.slow_consumers_closed == 1


async def test_hub_send_applies_slow_consumer_rule_and_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(slow_consumer_timeout=3)
    box = Box(size=1)
    await hub.send(box.outbox, "reply")
    assert box.drain() == ["reply"]
    box.fill()
    await hub.send(box.outbox, "reply")
    await hub.send(box.outbox, "reply")
    assert trio.current_time() == pytest.approx(6)
    assert box.slow_closes == 2
    assert hub.slow_consumers_closed == 2


# -- backpressure through real connections -------------------------------------------------


# A stalled device's outbox queues four frames: the fifth broadcast finds it full.
OUTBOX = 4
FILLING = OUTBOX + 1


async def test_backpressure_stalled_reader_closed_4000_fast_reader_unaffected(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(outbox_size=OUTBOX, slow_consumer_timeout=5, cleanup_timeout=2)
    pub, fast, stalled = await session_of(nursery, app, "p", "f", "s")
    stalled.ws.stall()
    start = trio.current_time()
    publish_updates(pub, FILLING)
    with trio.fail_after(5.1):
        await pub.ws.wait_for(MessageType.HEARTBEAT_ACK)
    # The fast device had everything at once, long before the slow consumer's deadline ...
    assert [(t, v) for t, v, _ in pushes(fast)] == [(start, i) for i in range(FILLING)]
    # ... while the publisher felt the pressure for at most slow_consumer_timeout.
    assert delivered_at(pub, MessageType.HEARTBEAT_ACK) == [pytest.approx(start + 5)]
    assert stalled.connection.close_code == CloseCode.SLOW_CONSUMER
    assert app.hub.slow_consumers_closed == 1
    left = await fast.ws.wait_for(MessageType.DEVICE_LEFT)
    assert left["payload"]["device_id"] == "s"
    with trio.fail_after(2.1):  # its close frame cannot be written: clean-up is bounded
        await stalled.done.wait()
    assert [c["code"] for c in stalled.ws.close_calls()] == [CloseCode.SLOW_CONSUMER]
    assert not pub.ws.is_closed
    assert not fast.ws.is_closed
    assert app.hub.subscriber_count == 2


async def test_backpressure_slow_consumer_leaves_at_deadline_and_is_released_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # The device never reads again: it leaves the session at the slow-consumer
    # deadline, its close frame cannot be written, and the clean-up (bounded by
    # CLEANUP_TIMEOUT) releases the socket; nobody waits for it afterwards.
    app = make_app(outbox_size=OUTBOX, slow_consumer_timeout=5, cleanup_timeout=2)
    pub, fast, stalled = await session_of(nursery, app, "p", "f", "s")
    stalled.ws.stall()
    start = trio.current_time()
    publish_updates(pub, FILLING)
    with trio.fail_after(5.1):
        left = await fast.ws.wait_for(MessageType.DEVICE_LEFT)
    assert left["payload"]["device_id"] == "s"
    assert delivered_at(fast, MessageType.DEVICE_LEFT) == [pytest.approx(start + 5)]
    assert app.hub.subscriber_count == 2
    device = app.presence.presence.device("s1", "s")
    assert device is not None
    assert not device.is_online

    later = trio.current_time()
    publish_updates(pub, FILLING)  # nobody waits for the closed outbox again
    with trio.fail_after(1):
        for _ in range(2):
            await pub.ws.wait_for(MessageType.HEARTBEAT_ACK)
    assert delivered_at(pub, MessageType.HEARTBEAT_ACK)[-1] == later
    assert len(pushes(fast)) == 2 * FILLING
    assert app.hub.slow_consumers_closed == 1
    with trio.fail_after(2.1):
        await stalled.done.wait()
    assert trio.current_time() == pytest.approx(start + 5 + 2)
    assert stalled.ws.released
    assert not stalled.ws.is_closed  # the close frame never got through


async def test_backpressure_outbox_drained_in_time_is_not_closed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(outbox_size=OUTBOX, slow_consumer_timeout=5)
    pub, fast, slow = await session_of(nursery, app, "p", "f", "s")
    slow.ws.stall()
    start = trio.current_time()
    publish_updates(pub, FILLING)
    assert await still_open_for(slow, 2)
    slow.ws.release_reader()  # the reader catches up within the deadline
    with trio.fail_after(0.1):
        await pub.ws.wait_for(MessageType.HEARTBEAT_ACK)
        for _ in range(FILLING):
            await slow.ws.wait_for(MessageType.STATE_UPDATE)
    assert delivered_at(pub, MessageType.HEARTBEAT_ACK) == [pytest.approx(start + 2)]
    assert [v for _, v, _ in pushes(slow)] == list(range(FILLING))
    assert [v for _, v, _ in pushes(fast)] == list(range(FILLING))
    assert slow.connection.close_code is None
    assert app.hub.slow_consumers_closed == 0
    assert await still_open_for(slow, 50)
