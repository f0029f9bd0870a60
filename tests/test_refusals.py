"""RefusalLog: every refusal counted, a bounded sample logged per reason and interval."""

from __future__ import annotations

import logging

import pytest

from syncbridge.metrics import Metrics
from syncbridge.refusals import RefusalLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_refusals_counted_always_logged_within_budget(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="syncbridge.refusals")
    metrics = Metrics()
    clock = FakeClock()
    refusals = RefusalLog(metrics.count_refusal, lines_per_interval=3, interval=60, clock=clock)
    logged = [refusals.refuse("flood", "connection %d", i) for i in range(1000)]
    assert logged == [True] * 3 + [False] * 997
    assert len(caplog.records) == 3
    # Another reason has its own budget.
    assert refusals.refuse("other", "x")
    clock.now = 60.0
    assert refusals.refuse("flood", "connection %d", 1000)
    assert caplog.records[-1].getMessage() == (
        "refused (flood): connection 1000 (997 similar refusals not logged)"
    )
    text = metrics.render().decode()
    assert 'syncbridge_refusals_total{reason="flood"} 1001.0' in text
    assert 'syncbridge_refusals_total{reason="other"} 1.0' in text
