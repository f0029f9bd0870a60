"""Per-token budget for HTTP API writes (HTTP_RATE_LIMIT, HTTP_RATE_BURST)."""

from __future__ import annotations

import collections
import math
from typing import Final

from syncbridge.protocol.session import TokenBucket

__all__ = ["WriteBudget"]

#: Buckets kept at most; the least recently used is forgotten first (a
#: forgotten token starts again with a full burst, which only ever errs
#: towards letting a write through).
MAX_TRACKED_TOKENS: Final = 10_000


class WriteBudget:
    """A token bucket per caller token, kept in this process."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def take(self, key: str, now: float) -> float | None:
        """Take one write from ``key``'s budget: None if allowed, else seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate=self._rate, burst=self._burst)
            if len(self._buckets) > MAX_TRACKED_TOKENS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.allow(now):
            return None
        return (1.0 - bucket.tokens) / self._rate

    @staticmethod
    def retry_after(wait: float) -> str:
        """The Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait)))
