"""Reconnect delays: exponential, capped, jittered, reset after success."""

from __future__ import annotations

import random

from syncbridge.client.backoff import Backoff


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.5, max_delay=4.0, rng=random.Random(7))
    bounds = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = [backoff.next_delay() for _ in bounds]
    assert all(0 <= d <= b for d, b in zip(delays, bounds, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_backoff_spreads_many_clients_over_the_window() -> None:
    rng = random.Random(1)
    delays = [Backoff(initial=1.0, rng=rng).next_delay() for _ in range(1000)]
    # Full jitter: a thousand clients told 1001 at once come back spread over [0, 1).
    assert sum(d < 0.5 for d in delays) in range(400, 600)
