"""The embedded in-memory store: the default, for one process and for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import trio

from syncbridge.protocol.messages import Operation
from syncbridge.protocol.session import (
    DEFAULT_HISTORY_MAX_BYTES,
    Change,
    Commit,
    Edit,
    SessionState,
    Snapshot,
)
from syncbridge.store.base import Origin, RestorePoint

__all__ = ["MemoryStore"]


class MemoryStore:
    """Sessions in a dict. Atomic per session because ``apply`` never awaits midway.

    State lives as long as the process; a session unwritten for ``session_ttl``
    seconds expires (checked on access and swept every ``sweep_interval``).
    """

    name = "memory"
    #: The service fans changes out itself; nothing else would.
    publishes = False

    def __init__(
        self,
        *,
        session_ttl: float,
        history_size: int,
        max_state_bytes: int,
        max_keys: int,
        history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES,
        max_replay_bytes: int | None = None,
        sweep_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions: dict[str, SessionState] = {}
        # Restore points per session, newest first: (description, state JSON).
        self._points: dict[str, list[tuple[RestorePoint, bytes]]] = {}
        # Revocations: jti -> until; (session, device) -> (issued_before, until).
        self._revoked_tokens: dict[str, int] = {}
        self._revoked_devices: dict[tuple[str, str], tuple[int, int]] = {}
        # Handoff tickets by hash: (record JSON, user id, expiry).
        self._tickets: dict[str, tuple[bytes, str, int]] = {}
        self._expires: dict[str, float] = {}
        self._ttl = session_ttl
        self._history_size = history_size
        self._history_max_bytes = history_max_bytes
        # A replay larger than a snapshot may be is answered with the snapshot.
        self._max_replay_bytes = max_state_bytes if max_replay_bytes is None else max_replay_bytes
        self._max_state_bytes = max_state_bytes
        self._max_keys = max_keys
        self._sweep_interval = sweep_interval
        self._clock = clock

    def _live(self, session_id: str) -> SessionState | None:
        state = self._sessions.get(session_id)
        if state is not None and self._expires[session_id] <= self._clock():
            self._drop(session_id)
            return None
        return state

    def _drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._expires.pop(session_id, None)
        self._points.pop(session_id, None)

    async def snapshot(self, session_id: str) -> Snapshot:
        """The session's state, or an empty version-0 snapshot."""
        await trio.lowlevel.checkpoint()
        state = self._live(session_id)
        if state is None:
            return Snapshot(
                session_id=session_id, values={}, version=0, created_at=None, updated_at=None
            )
        return state.snapshot()

    async def apply(
        self,
        session_id: str,
        key: str,
        value: Any,
        operation: Operation,
        origin: Origin | None = None,
        base_version: int | None = None,
    ) -> Change:
        """Apply one change; the whole read-modify-write happens without a checkpoint."""
        now = self._clock()
        state = self._state(session_id)
        change = state.apply(
            key,
            value,
            operation,
            now=int(now),
            max_state_bytes=self._max_state_bytes,
            max_keys=self._max_keys,
            user_id=origin.user_id if origin else None,
            device_id=origin.device_id if origin else None,
            base_version=base_version,
        )
        self._keep(session_id, state, now)
        # The checkpoint comes after the change so that cancellation can never
        # separate "applied" from "returned".
        await trio.lowlevel.cancel_shielded_checkpoint()
        return change

    async def apply_many(
        self,
        session_id: str,
        edits: tuple[Edit, ...],
        origin: Origin | None = None,
        base_version: int | None = None,
    ) -> Commit:
        """Apply several edits as one version, without a checkpoint midway."""
        now = self._clock()
        state = self._state(session_id)
        commit = state.apply_many(
            edits,
            now=int(now),
            max_state_bytes=self._max_state_bytes,
            max_keys=self._max_keys,
            user_id=origin.user_id if origin else None,
            device_id=origin.device_id if origin else None,
            base_version=base_version,
        )
        self._keep(session_id, state, now)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return commit

    def _state(self, session_id: str) -> SessionState:
        state = self._live(session_id)
        if state is None:
            state = SessionState(
                session_id=session_id,
                history_size=self._history_size,
                history_max_bytes=self._history_max_bytes,
            )
        return state

    def _keep(self, session_id: str, state: SessionState, now: float) -> None:
        # Registered only once a change is accepted: a refused first write must
        # leave no session behind (every held session has an expiry).
        self._sessions[session_id] = state
        self._expires[session_id] = now + self._ttl

    async def changes_since(self, session_id: str, version: int) -> list[Change] | None:
        """Changes after ``version`` from the capped in-memory history, or None when
        it does not reach back or the replay is over the budget (measured, not decoded)."""
        await trio.lowlevel.checkpoint()
        state = self._live(session_id)
        if state is None:
            return [] if version == 0 else None
        return state.changes_since(version, self._max_replay_bytes)

    async def save_restore_point(
        self, session_id: str, *, point_id: str, label: str, origin: Origin, keep: int
    ) -> RestorePoint:
        """Copy the state; saving touches the session (its expiry restarts)."""
        now = self._clock()
        state = self._state(session_id)
        snap = state.snapshot()
        point = RestorePoint(
            id=point_id,
            version=snap.version,
            label=label,
            created_at=int(now),
            created_by_user=origin.user_id,
            created_by_device=origin.device_id,
        )
        points = self._points.setdefault(session_id, [])
        points.insert(0, (point, orjson.dumps(snap.state_json())))
        del points[keep:]
        self._keep(session_id, state, now)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return point

    async def restore_points(self, session_id: str) -> list[RestorePoint]:
        """Newest first."""
        await trio.lowlevel.checkpoint()
        self._live(session_id)
        return [point for point, _state in self._points.get(session_id, [])]

    async def restore_point(
        self, session_id: str, point_id: str
    ) -> tuple[RestorePoint, bytes] | None:
        """One restore point with its state."""
        await trio.lowlevel.checkpoint()
        self._live(session_id)
        for point, state in self._points.get(session_id, []):
            if point.id == point_id:
                return point, state
        return None

    async def delete_session(self, session_id: str) -> int:
        """Forget the session and its restore points."""
        state = self._live(session_id)
        self._drop(session_id)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return 0 if state is None else state.version

    async def revoke(
        self,
        *,
        until: int,
        token_id: str | None = None,
        session_id: str | None = None,
        device_id: str | None = None,
        issued_before: int | None = None,
    ) -> None:
        """Remember the revocation until ``until``."""
        await trio.lowlevel.checkpoint()
        if token_id is not None:
            self._revoked_tokens[token_id] = max(until, self._revoked_tokens.get(token_id, 0))
        if session_id is not None and device_id is not None and issued_before is not None:
            self._revoked_devices[(session_id, device_id)] = (issued_before, until)

    async def is_revoked(
        self, *, token_id: str | None, session_id: str, device_id: str, issued_at: int | None
    ) -> bool:
        """Checked at every Auth and HTTP request; expired revocations are forgotten."""
        await trio.lowlevel.checkpoint()
        now = self._clock()
        if token_id is not None:
            until = self._revoked_tokens.get(token_id)
            if until is not None:
                if until > now:
                    return True
                del self._revoked_tokens[token_id]
        device = self._revoked_devices.get((session_id, device_id))
        if device is not None:
            issued_before, until = device
            if until <= now:
                del self._revoked_devices[(session_id, device_id)]
            elif issued_at is None or issued_at <= issued_before:
                return True
        return False

    async def put_ticket(self, ticket_hash: str, record: bytes, *, expires_at: int) -> None:
        """Keep the ticket until it expires (or is claimed)."""
        await trio.lowlevel.checkpoint()
        now = self._clock()
        for stale in [h for h, (_r, _u, at) in self._tickets.items() if at <= now]:
            del self._tickets[stale]
        self._tickets[ticket_hash] = (record, orjson.loads(record)["user_id"], expires_at)

    async def claim_ticket(self, ticket_hash: str, user_id: str) -> tuple[str, bytes | None]:
        """Check and remove without a checkpoint in between."""
        await trio.lowlevel.checkpoint()
        found = self._tickets.get(ticket_hash)
        if found is None or found[2] <= self._clock():
            self._tickets.pop(ticket_hash, None)
            return "GONE", None
        if found[1] != user_id:
            return "OTHER_USER", None
        del self._tickets[ticket_hash]
        return "OK", found[0]

    async def ping(self) -> float:
        """Always reachable."""
        await trio.lowlevel.checkpoint()
        return 0.0

    @property
    def session_count(self) -> int:
        """Sessions currently held (expired ones may linger until the next sweep)."""
        return len(self._sessions)

    def sweep(self) -> int:
        """Drop every expired session; return how many were dropped."""
        now = self._clock()
        expired = [sid for sid, at in self._expires.items() if at <= now]
        for sid in expired:
            self._drop(sid)
        return len(expired)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep expired sessions periodically until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self._sweep_interval)
            self.sweep()
