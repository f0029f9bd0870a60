"""The console's observer: bounded events, per-session rates over a window, wake-ups."""

from __future__ import annotations

import trio
import trio.testing

from syncbridge.observe import CLOSE, UPDATE, Observer


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_observer_rates_average_over_the_window_and_expire() -> None:
    clock = FakeClock()
    observer = Observer(window_seconds=10, clock=clock)
    for version in range(1, 21):
        observer.updated("hot", "a", version, "k")
    observer.updated("cold", "b", 1, "k")
    assert observer.rate("hot") == 2.0
    assert observer.hottest(5) == [("hot", 2.0), ("cold", 0.1)]
    assert observer.last_version("hot") == 20
    clock.now += 5
    observer.updated("cold", "b", 2, "k")
    assert observer.hottest(1) == [("hot", 2.0)]
    clock.now += 6  # the burst of "hot" is now outside the window
    assert observer.rate("hot") == 0.0
    assert observer.hottest(5) == [("cold", 0.1)]
    assert observer.rate("never") == 0.0
    assert observer.last_version("never") is None


def test_observer_keeps_a_bounded_ring_of_events() -> None:
    observer = Observer(capacity=3, clock=FakeClock())
    observer.updated("s", "a", 1, "k1")
    observer.updated("s", "a", 2, "k2")
    observer.closed("s", "a", 4000)
    observer.closed("t", "b", None)
    events = list(observer.events())
    assert [e.seq for e in events] == [2, 3, 4]
    assert [(e.kind, e.key, e.code) for e in observer.events(session_id="s")] == [
        (UPDATE, "k2", None),
        (CLOSE, "", 4000),
    ]
    assert [e.seq for e in observer.events(after=3)] == [4]
    assert [e.device_id for e in observer.events(kind=CLOSE)] == ["a", "b"]
    assert observer.last_seq == 4


def test_observer_forgets_the_least_recently_updated_sessions_first() -> None:
    observer = Observer(max_sessions=2, clock=FakeClock())
    observer.updated("a", "d", 1, "k")
    observer.updated("b", "d", 1, "k")
    observer.updated("a", "d", 2, "k")
    observer.updated("c", "d", 1, "k")
    assert {s for s, _ in observer.hottest(10)} == {"a", "c"}


async def test_observer_wakes_a_waiting_feed_on_the_next_event() -> None:
    observer = Observer()
    woken = trio.Event()

    async def watch() -> None:
        await observer.wait_event(after=observer.last_seq)
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.testing.wait_all_tasks_blocked()
        assert not woken.is_set()
        observer.updated("s", "a", 1, "k")
        with trio.fail_after(1):
            await woken.wait()
    # An event recorded before the wait began is not missed.
    with trio.fail_after(1):
        await observer.wait_event(after=0)
