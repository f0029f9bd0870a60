"""Reconnect delays: exponential backoff with full jitter (sans-IO: the caller sleeps).

Full jitter (a uniform delay between 0 and the exponential bound) spreads the
reconnects of every client of a restarted server over the whole window, instead
of bringing them back in synchronised waves (close 1001 reaches them all at once).
"""

from __future__ import annotations

import random

import attrs

__all__ = ["Backoff"]


@attrs.define
class Backoff:
    """Delays for successive attempts: ``uniform(0, min(max_delay, initial * 2**n))``."""

    initial: float = 0.5
    max_delay: float = 30.0
    rng: random.Random = attrs.Factory(random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count this attempt)."""
        bound = min(self.max_delay, self.initial * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self.rng.uniform(0, bound)

    def reset(self) -> None:
        """After a successful resume: the next failure starts from ``initial`` again."""
        self.attempt = 0
