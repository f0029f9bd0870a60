"""Session rules as plain data: versioned state, change history, per-connection rate.

Nothing here awaits or reads a clock: time comes in as ``now`` (Unix seconds for
wall-clock facts, any monotonic float for the rate limiter).
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
import orjson

from syncbridge.errors import LimitExceeded
from syncbridge.protocol.messages import Operation

__all__ = ["Change", "SessionState", "Snapshot", "TokenBucket"]


@attrs.frozen(kw_only=True)
class Change:
    """One accepted change: the session's version after it, and what it did."""

    version: int
    key: str
    value: Any
    operation: Operation
    at: int  # Unix seconds when the store accepted it
    user_id: str | None = None  # who made it (replayed changes carry it)
    device_id: str | None = None

    def describe(self) -> dict[str, Any]:
        """The change as a Resume (15) entry."""
        return {
            "key": self.key,
            "value": self.value,
            "operation": self.operation.value,
            "version": self.version,
            "user_id": self.user_id,
            "device_id": self.device_id,
        }


@attrs.frozen(kw_only=True)
class Snapshot:
    """A session's whole state at one version (``version == 0``: never written)."""

    session_id: str
    state: dict[str, Any]
    version: int
    created_at: int | None
    updated_at: int | None


def _entry_bytes(key: str, value: Any) -> int:
    # The encoded size is what a snapshot costs on the wire and in Redis, so the
    # per-session limit is stated in those bytes.
    return len(key.encode()) + len(orjson.dumps(value))


@attrs.define(kw_only=True)
class SessionState:
    """The authoritative state of one session, with a capped history of changes.

    ``apply`` is the single place where versions are assigned: +1 per accepted
    change, never reused. History keeps the last ``history_size`` changes so a
    reconnecting client can be sent exactly what it missed.
    """

    session_id: str
    history_size: int
    data: dict[str, Any] = attrs.field(factory=dict)
    version: int = 0
    created_at: int | None = None
    updated_at: int | None = None
    total_bytes: int = 0
    _sizes: dict[str, int] = attrs.field(factory=dict, alias="_sizes")
    history: collections.deque[Change] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.history = collections.deque(maxlen=self.history_size)

    def apply(
        self,
        key: str,
        value: Any,
        operation: Operation,
        *,
        now: int,
        max_state_bytes: int,
        max_keys: int,
        user_id: str | None = None,
        device_id: str | None = None,
    ) -> Change:
        """Apply one change and return it with its version; raise if it breaks a limit."""
        if operation is Operation.DELETE:
            self.total_bytes -= self._sizes.pop(key, 0)
            self.data.pop(key, None)
            value = None
        else:
            size = _entry_bytes(key, value)
            old = self._sizes.get(key)
            new_total = self.total_bytes - (old or 0) + size
            if new_total > max_state_bytes:
                raise LimitExceeded(
                    f"session state would grow to {new_total} bytes; the limit is "
                    f"{max_state_bytes} bytes",
                    status=413,
                    error_code="STATE_TOO_LARGE",
                    details={"limit_bytes": max_state_bytes, "would_be_bytes": new_total},
                )
            if old is None and len(self.data) >= max_keys:
                raise LimitExceeded(
                    f"session already holds {len(self.data)} keys; the limit is {max_keys}",
                    status=413,
                    error_code="TOO_MANY_KEYS",
                    details={"limit_keys": max_keys},
                )
            self._sizes[key] = size
            self.total_bytes = new_total
            self.data[key] = value
        self.version += 1
        if self.created_at is None:
            self.created_at = now
        self.updated_at = now
        change = Change(
            version=self.version,
            key=key,
            value=value,
            operation=operation,
            at=now,
            user_id=user_id,
            device_id=device_id,
        )
        self.history.append(change)
        return change

    def snapshot(self) -> Snapshot:
        """A copy of the state that later changes do not alter."""
        return Snapshot(
            session_id=self.session_id,
            state=dict(self.data),
            version=self.version,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def changes_since(self, version: int) -> list[Change] | None:
        """The changes after ``version`` in order, or None when history no longer reaches.

        A ``version`` beyond the current one is also None: the client holds state
        this session never had (e.g. it expired and started again), so it must
        take a snapshot rather than believe it is up to date.
        """
        if version == self.version:
            return []
        if version > self.version:
            return None
        if not self.history or self.history[0].version > version + 1:
            return None
        return [c for c in self.history if c.version > version]


@attrs.define
class TokenBucket:
    """Message-rate limit for one connection: ``rate`` per second, bursts of ``burst``."""

    rate: float
    burst: float
    tokens: float = attrs.field(init=False)
    stamp: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.tokens = self.burst

    def allow(self, now: float) -> bool:
        """Take one token if there is one; say whether the message may go through."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
