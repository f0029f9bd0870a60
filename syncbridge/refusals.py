"""Refusals: each one counted in /metrics by reason, and logged without flooding the log.

A hostile client can provoke a refusal with every message it sends (hundreds a
second per socket, on any number of sockets), so a log line per refusal would
let it fill the disk and bury everything else. Each reason gets a small budget
of lines per interval; what is held back is counted, and the next line that
gets through says how many similar ones were suppressed. The metric counts
every refusal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import attrs

__all__ = ["LINES_PER_INTERVAL", "LOG_INTERVAL", "RefusalLog"]

log = logging.getLogger(__name__)

#: At most this many log lines per reason per LOG_INTERVAL seconds.
LINES_PER_INTERVAL: Final = 5
LOG_INTERVAL: Final = 60.0


@attrs.define
class _Budget:
    window_start: float
    lines: int = 0
    suppressed: int = 0


class RefusalLog:
    """Count refusals by reason (``count(reason)``) and log a bounded sample of them."""

    def __init__(
        self,
        count: Callable[[str], None],
        *,
        lines_per_interval: int = LINES_PER_INTERVAL,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self._count = count
        self._lines = lines_per_interval
        self._interval = interval
        self._clock = clock
        self._log = logger
        self._budgets: dict[str, _Budget] = {}

    def refuse(self, reason: str, message: str, *args: Any) -> bool:
        """Count one refusal; log it (INFO) unless this reason used its budget. Says if logged."""
        self._count(reason)
        now = self._clock()
        budget = self._budgets.get(reason)
        if budget is None or now - budget.window_start >= self._interval:
            suppressed = budget.suppressed if budget else 0
            budget = self._budgets[reason] = _Budget(window_start=now, suppressed=suppressed)
        if budget.lines >= self._lines:
            budget.suppressed += 1
            return False
        budget.lines += 1
        if budget.suppressed:
            message += " (%d similar refusals not logged)"
            args = (*args, budget.suppressed)
            budget.suppressed = 0
        self._log.info("refused (%s): " + message, reason, *args)
        return True
