"""The local copy of one session's state, kept equal to the server's by version (sans-IO).

The rules are docs/protocol.md's client checklist: apply a StateUpdate whose
version is exactly ours + 1; ignore versions we already have; a later one means
we missed something, so it is held and a snapshot is asked for. A Resume
(``changes`` or ``snapshot``) or a snapshot brings the mirror up to date, after
which held updates that follow on are applied. No I/O and no clock: messages in,
events out.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

__all__ = [
    "Change",
    "Conflict",
    "ConnectionLost",
    "Event",
    "Mirror",
    "Reconnected",
    "Resynced",
    "TokenRefreshed",
    "change_from",
]

# Held updates beyond this are dropped: the snapshot that was asked for covers them.
_MAX_HELD: Final = 10_000


@attrs.frozen(kw_only=True)
class Change:
    """One accepted change, in version order; ``local`` when this client made it."""

    key: str
    value: Any
    operation: str  # "SET" or "DELETE"
    version: int
    user_id: str | None = None
    device_id: str | None = None
    local: bool = False


@attrs.frozen(kw_only=True)
class Resynced:
    """The mirror was replaced wholesale; re-read ``state`` (a copy is included).

    ``reason``: ``snapshot`` (the server's history did not reach back, or the
    session restarted), ``gap`` (an update was missed), ``overflow`` (events were
    not consumed fast enough, so individual changes were dropped).
    """

    state: dict[str, Any]
    version: int
    reason: str


@attrs.frozen(kw_only=True)
class ConnectionLost:
    """The connection closed; the client reconnects by itself unless it was told to stop."""

    code: int | None
    reason: str | None


@attrs.frozen(kw_only=True)
class Reconnected:
    """Connected and resumed; ``state``/``version`` are current again."""

    version: int
    url: str


@attrs.frozen(kw_only=True)
class Conflict:
    """An update queued while offline was not sent: ``key`` changed on the server meanwhile.

    Its ``set()``/``delete()`` raised :class:`~syncbridge.client.ConflictError`.
    """

    key: str
    attempted: Any  # the value the update would have set (None for a DELETE)
    operation: str
    server_value: Any
    version: int


@attrs.frozen(kw_only=True)
class TokenRefreshed:
    """The connection was re-authenticated before its token expired.

    ``token`` is the latest ``new_token`` (keep it to start the next run with it);
    ``expires_in`` its lifetime in seconds.
    """

    token: str = attrs.field(repr=False)
    expires_in: float


Event = Change | Resynced | ConnectionLost | Reconnected | Conflict | TokenRefreshed


def change_from(message: dict[str, Any], *, local: bool = False) -> Change:
    """A Change from a StateUpdate ack or broadcast (the whole message)."""
    payload = message.get("payload") or {}
    return _change(payload, message, local=local)


def _change(payload: dict[str, Any], who: dict[str, Any], *, local: bool) -> Change:
    operation = str(payload.get("operation", "SET")).upper()
    return Change(
        key=payload["key"],
        value=None if operation == "DELETE" else payload.get("value"),
        operation=operation,
        version=int(payload["version"]),
        user_id=who.get("user_id"),
        device_id=who.get("device_id"),
        local=local,
    )


@attrs.define
class Mirror:
    """State and version of one session as this client knows it."""

    state: dict[str, Any] = attrs.Factory(dict)
    version: int = 0
    held: dict[int, Change] = attrs.Factory(dict)

    def apply(self, change: Change) -> tuple[list[Event], bool]:
        """Apply one change; return the events and whether a snapshot is needed."""
        if change.version <= self.version:
            return [], False  # already have it (our ack racing a resume, a duplicate)
        if change.version > self.version + 1:
            if len(self.held) < _MAX_HELD:
                self.held[change.version] = change
            return [], True
        self._set(change)
        return [change, *self._release_held()], False

    def apply_snapshot(self, snapshot: dict[str, Any], *, reason: str) -> list[Event]:
        """Replace everything with a SnapshotResponse payload (its version is trusted,
        even when lower than ours: the session expired or the memory store restarted)."""
        self.state = dict(snapshot.get("state_data") or {})
        self.version = int(snapshot.get("version") or 0)
        events: list[Event] = [
            Resynced(state=dict(self.state), version=self.version, reason=reason)
        ]
        return events + self._release_held()

    def apply_resume(self, payload: dict[str, Any]) -> tuple[list[Event], list[Change], bool]:
        """Apply a Resume (15) payload: events, the changes it replayed, snapshot needed."""
        if payload.get("mode") == "snapshot":
            return self.apply_snapshot(payload.get("snapshot") or {}, reason="snapshot"), [], False
        events: list[Event] = []
        replayed: list[Change] = []
        for raw in payload.get("changes") or []:
            change = _change(raw, raw, local=False)
            replayed.append(change)
            more, gap = self.apply(change)
            events += more
            if gap:
                return events, replayed, True
        return events, replayed, int(payload.get("version", self.version)) > self.version

    def _set(self, change: Change) -> None:
        if change.operation == "DELETE":
            self.state.pop(change.key, None)
        else:
            self.state[change.key] = change.value
        self.version = change.version

    def _release_held(self) -> list[Event]:
        events: list[Event] = []
        for version in sorted(self.held):
            if version <= self.version:
                del self.held[version]
            elif version == self.version + 1:
                change = self.held.pop(version)
                self._set(change)
                events.append(change)
            else:
                break
        return events
