"""Session rules as plain data: versioned state, change history, per-connection rate.

Nothing here awaits or reads a clock: time comes in as ``now`` (Unix seconds for
wall-clock facts, any monotonic float for the rate limiter).
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Final

import attrs
import orjson

from syncbridge.errors import LimitExceeded, VersionConflict
from syncbridge.protocol.messages import Operation

__all__ = [
    "DEFAULT_HISTORY_MAX_BYTES",
    "Change",
    "Commit",
    "Edit",
    "SessionState",
    "Snapshot",
    "TokenBucket",
    "change_from_record",
    "changes_from_record",
    "check_base_version",
]

#: HISTORY_MAX_BYTES's default (settings.py declares the setting).
DEFAULT_HISTORY_MAX_BYTES: Final = 1_000_000


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
class Edit:
    """One key's part of a multi-key write: ``raw`` is the value's JSON (``b"null"`` for DELETE)."""

    key: str
    operation: Operation
    raw: bytes

    @classmethod
    def set(cls, key: str, value: Any) -> Edit:
        """SET ``key`` to ``value`` (encoded here, once)."""
        return cls(key=key, operation=Operation.SET, raw=orjson.dumps(value))

    @classmethod
    def delete(cls, key: str) -> Edit:
        """DELETE ``key``."""
        return cls(key=key, operation=Operation.DELETE, raw=b"null")


@attrs.frozen(kw_only=True)
class Commit:
    """One accepted multi-key write: one new version, several keys changed."""

    version: int
    edits: tuple[Edit, ...]
    at: int
    user_id: str | None = None
    device_id: str | None = None


def check_base_version(base_version: int | None, current: int) -> None:
    """Raise VersionConflict when a write based on ``base_version`` would overwrite newer state.

    None means "last writer wins" (v1 behaviour).
    """
    if base_version is not None and base_version != current:
        raise VersionConflict(current_version=current, base_version=base_version)


@attrs.frozen(kw_only=True)
class Snapshot:
    """A session's whole state at one version (``version == 0``: never written).

    Values are kept as the JSON the store holds (``values``), so a snapshot is
    sent without decoding and re-encoding them; ``state`` decodes on demand.
    """

    session_id: str
    values: dict[str, bytes]
    version: int
    created_at: int | None
    updated_at: int | None
    #: Who made the latest change (user and device ids), when known.
    updated_by_user: str | None = None
    updated_by_device: str | None = None

    @property
    def state(self) -> dict[str, Any]:
        """The state with its values decoded."""
        return {key: orjson.loads(raw) for key, raw in self.values.items()}

    def state_json(self) -> dict[str, orjson.Fragment]:
        """The state for ``orjson.dumps``: each value embedded as the JSON it is."""
        return {key: orjson.Fragment(raw) for key, raw in self.values.items()}


@attrs.define(kw_only=True)
class SessionState:
    """The authoritative state of one session, with a capped history of changes.

    ``apply`` is the single place where versions are assigned: +1 per accepted
    change, never reused. History keeps the last ``history_size`` changes, and
    no more than ``history_max_bytes`` of encoded records (oldest dropped
    first), so a reconnecting client can be sent exactly what it missed while a
    session's memory stays bounded whatever the size of its values.

    Values and history records are held as encoded JSON (``bytes``), not as
    Python objects: bytes are invisible to the cyclic garbage collector, whose
    full collections over hundreds of thousands of history objects were the
    p99 latency tail under load (docs/performance.md). The encoding is done
    anyway, to measure the state's size.
    """

    session_id: str
    history_size: int
    history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    version: int = 0
    created_at: int | None = None
    updated_at: int | None = None
    total_bytes: int = 0
    updated_by_user: str | None = None
    updated_by_device: str | None = None
    history_bytes: int = attrs.field(init=False, default=0)
    _values: dict[str, bytes] = attrs.field(factory=dict, alias="_values")
    _records: collections.deque[bytes] = attrs.field(init=False, factory=collections.deque)

    @property
    def data(self) -> dict[str, Any]:
        """The state with its values decoded (a copy)."""
        return {key: orjson.loads(raw) for key, raw in self._values.items()}

    @property
    def history(self) -> list[Change]:
        """The kept changes, oldest first (decoded)."""
        return [c for raw in self._records for c in _changes(raw)]

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
        base_version: int | None = None,
    ) -> Change:
        """Apply one change and return it with its version; raise if it breaks a limit
        or the session has moved on from ``base_version``."""
        check_base_version(base_version, self.version)
        key_bytes = len(key.encode())
        old = self._values.get(key)
        old_size = 0 if old is None else key_bytes + len(old)
        if operation is Operation.DELETE:
            if old is not None:
                del self._values[key]
                self.total_bytes -= old_size
            value = None
            raw = b"null"
        else:
            # The encoded size is what a snapshot costs on the wire and in
            # Redis, so the per-session limit is stated in those bytes.
            raw = orjson.dumps(value)
            new_total = self.total_bytes - old_size + key_bytes + len(raw)
            if new_total > max_state_bytes:
                raise LimitExceeded(
                    f"session state would grow to {new_total} bytes; the limit is "
                    f"{max_state_bytes} bytes",
                    status=413,
                    error_code="STATE_TOO_LARGE",
                    details={"limit_bytes": max_state_bytes, "would_be_bytes": new_total},
                )
            if old is None and len(self._values) >= max_keys:
                raise LimitExceeded(
                    f"session already holds {len(self._values)} keys; the limit is {max_keys}",
                    status=413,
                    error_code="TOO_MANY_KEYS",
                    details={"limit_keys": max_keys},
                )
            self._values[key] = raw
            self.total_bytes = new_total
        self._bump(now, user_id, device_id)
        self._remember(
            orjson.dumps(
                {
                    "version": self.version,
                    "key": key,
                    "value": orjson.Fragment(raw),
                    "operation": operation.value,
                    "at": now,
                    "user_id": user_id,
                    "device_id": device_id,
                }
            )
        )
        return Change(
            version=self.version,
            key=key,
            value=value,
            operation=operation,
            at=now,
            user_id=user_id,
            device_id=device_id,
        )

    def apply_many(
        self,
        edits: tuple[Edit, ...],
        *,
        now: int,
        max_state_bytes: int,
        max_keys: int,
        user_id: str | None = None,
        device_id: str | None = None,
        base_version: int | None = None,
    ) -> Commit:
        """Apply several edits (distinct keys) as ONE new version, all or none.

        Limits are checked on the result before anything changes: the state's
        encoded size, and the key count when the write adds keys.
        """
        check_base_version(base_version, self.version)
        if not edits:
            raise RuntimeError("apply_many needs at least one edit")
        total = self.total_bytes
        keys = len(self._values)
        for edit in edits:
            key_bytes = len(edit.key.encode())
            old = self._values.get(edit.key)
            if old is not None:
                total -= key_bytes + len(old)
                keys -= 1
            if edit.operation is Operation.SET:
                total += key_bytes + len(edit.raw)
                keys += 1
        _check_limits(total, keys, len(self._values), max_state_bytes, max_keys)
        for edit in edits:
            if edit.operation is Operation.SET:
                self._values[edit.key] = edit.raw
            else:
                self._values.pop(edit.key, None)
        self.total_bytes = total
        self._bump(now, user_id, device_id)
        self._remember(
            orjson.dumps(
                {
                    "version": self.version,
                    "changes": [
                        {
                            "key": e.key,
                            "value": orjson.Fragment(e.raw),
                            "operation": e.operation.value,
                        }
                        for e in edits
                    ],
                    "at": now,
                    "user_id": user_id,
                    "device_id": device_id,
                }
            )
        )
        return Commit(
            version=self.version, edits=edits, at=now, user_id=user_id, device_id=device_id
        )

    def _bump(self, now: int, user_id: str | None, device_id: str | None) -> None:
        self.version += 1
        if self.created_at is None:
            self.created_at = now
        self.updated_at = now
        self.updated_by_user = user_id
        self.updated_by_device = device_id

    def _remember(self, record: bytes) -> None:
        self._records.append(record)
        self.history_bytes += len(record)
        records = self._records
        while records and (
            len(records) > self.history_size or self.history_bytes > self.history_max_bytes
        ):
            self.history_bytes -= len(records.popleft())

    def snapshot(self) -> Snapshot:
        """A copy of the state that later changes do not alter."""
        return Snapshot(
            session_id=self.session_id,
            values=dict(self._values),
            version=self.version,
            created_at=self.created_at,
            updated_at=self.updated_at,
            updated_by_user=self.updated_by_user,
            updated_by_device=self.updated_by_device,
        )

    def changes_since(self, version: int, max_bytes: int | None = None) -> list[Change] | None:
        """The changes after ``version`` in order, or None when a snapshot is needed.

        None when history no longer reaches back to ``version``, or when the
        records to replay take more than ``max_bytes``: both are decided from
        the kept records' lengths, before any record is decoded. A ``version``
        beyond the current one is also None: the client holds state this
        session never had (e.g. it expired and started again), so it must take
        a snapshot rather than believe it is up to date.
        """
        if version == self.version:
            return []
        if version > self.version:
            return None
        # Versions are consecutive and each kept one has one record (a multi-key
        # write is one record holding its changes), so the oldest
        # kept record is the current version minus the records kept, plus one.
        oldest = self.version - len(self._records) + 1
        if not self._records or oldest > version + 1:
            return None
        count = self.version - version
        if max_bytes is not None and self.history_bytes > max_bytes:
            size = 0
            for record in itertools.islice(reversed(self._records), count):
                size += len(record)
                if size > max_bytes:
                    return None
        skip = len(self._records) - count
        return [c for raw in itertools.islice(self._records, skip, None) for c in _changes(raw)]


def _check_limits(total: int, keys: int, keys_before: int, max_bytes: int, max_keys: int) -> None:
    """The limits of a multi-key write, checked on its result (shared with Redis's answers)."""
    if total > max_bytes:
        raise LimitExceeded(
            f"session state would grow to {total} bytes; the limit is {max_bytes} bytes",
            status=413,
            error_code="STATE_TOO_LARGE",
            details={"limit_bytes": max_bytes, "would_be_bytes": total},
        )
    if keys > max_keys and keys > keys_before:
        raise LimitExceeded(
            f"session would hold {keys} keys; the limit is {max_keys}",
            status=413,
            error_code="TOO_MANY_KEYS",
            details={"limit_keys": max_keys},
        )


def changes_from_record(record: dict[str, Any]) -> list[Change]:
    """The Changes of one history record: one, or several of the same version for a
    multi-key write (``{"version", "changes": [{key, value, operation}], ...}``)."""
    nested = record.get("changes")
    if nested is None:
        return [change_from_record(record)]
    return [change_from_record({**record, **c, "version": record["version"]}) for c in nested]


def change_from_record(record: dict[str, Any]) -> Change:
    """A Change from its JSON record (the memory history and Redis share the shape)."""
    return Change(
        version=record["version"],
        key=record["key"],
        value=record["value"],
        operation=Operation(record["operation"]),
        at=record["at"],
        user_id=record.get("user_id") or None,
        device_id=record.get("device_id") or None,
    )


def _changes(raw: bytes) -> list[Change]:
    return changes_from_record(orjson.loads(raw))


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
