"""The Store protocol: where session state lives, versioned and atomic per session."""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

from syncbridge.protocol.messages import Operation
from syncbridge.protocol.session import Change, Commit, Edit, Snapshot

__all__ = ["Origin", "RestorePoint", "Store"]


@attrs.frozen
class Origin:
    """Who made a change: the identity for the broadcast and the connection to skip
    (None for a write that came over HTTP: every connection is told)."""

    user_id: str
    device_id: str
    connection: int | None


@attrs.frozen(kw_only=True)
class RestorePoint:
    """A labelled copy of a session's state at one version (HTTP API "snapshot")."""

    id: str
    version: int
    label: str
    created_at: int
    created_by_user: str | None
    created_by_device: str | None

    def describe(self) -> dict[str, Any]:
        """The API's description of the restore point (without its state)."""
        return {
            "id": self.id,
            "version": self.version,
            "label": self.label,
            "created_at": self.created_at,
            "created_by": {"user_id": self.created_by_user, "device_id": self.created_by_device},
        }

    @classmethod
    def from_description(cls, raw: dict[str, Any]) -> RestorePoint:
        """The inverse of :meth:`describe` (Redis stores the description)."""
        by = raw.get("created_by") or {}
        return cls(
            id=raw["id"],
            version=raw["version"],
            label=raw["label"],
            created_at=raw["created_at"],
            created_by_user=by.get("user_id"),
            created_by_device=by.get("device_id"),
        )


class Store(Protocol):
    """Authoritative session state.

    ``apply`` is atomic per session and assigns the next version; when it
    returns, the change is as durable as the backend makes it, and only then may
    it be acknowledged or broadcast. Backend failures surface as
    :class:`syncbridge.errors.StoreUnavailable`; limit breaches as
    :class:`syncbridge.errors.LimitExceeded`.
    """

    name: str
    #: True when ``apply`` itself delivers the change to every process's
    #: subscribers (Redis publishes from its script); False when the caller must.
    publishes: bool

    async def snapshot(self, session_id: str) -> Snapshot:
        """The whole state of a session (version 0 and empty when never written)."""
        ...

    async def apply(
        self,
        session_id: str,
        key: str,
        value: Any,
        operation: Operation,
        origin: Origin | None = None,
        base_version: int | None = None,
    ) -> Change:
        """Apply one change atomically and return it with its new version.

        With ``base_version``, raise :class:`syncbridge.errors.VersionConflict`
        (nothing applied) unless the session is at exactly that version.
        """
        ...

    async def apply_many(
        self,
        session_id: str,
        edits: tuple[Edit, ...],
        origin: Origin | None = None,
        base_version: int | None = None,
    ) -> Commit:
        """Apply edits of distinct keys as ONE new version, all or none, atomically.

        Publishing stores publish one StateUpdate per edit, each carrying the new
        version. Limits are checked on the result; ``base_version`` as in ``apply``.
        """
        ...

    async def changes_since(self, session_id: str, version: int) -> list[Change] | None:
        """Changes after ``version`` in order, or None when the client needs a snapshot.

        None when history no longer reaches back to ``version``, or when the
        replay's stored size exceeds the store's replay budget (MAX_STATE_BYTES):
        decided from stored lengths before reading or decoding the records.
        """
        ...

    async def save_restore_point(
        self, session_id: str, *, point_id: str, label: str, origin: Origin, keep: int
    ) -> RestorePoint:
        """Store a labelled copy of the state as it is now (atomically with its version),
        keeping the newest ``keep``; it expires with the session."""
        ...

    async def restore_points(self, session_id: str) -> list[RestorePoint]:
        """The session's restore points, newest first."""
        ...

    async def restore_point(
        self, session_id: str, point_id: str
    ) -> tuple[RestorePoint, bytes] | None:
        """One restore point and its state as one JSON object, or None."""
        ...

    async def delete_session(self, session_id: str) -> int:
        """Remove the state, history and restore points; return the version it had."""
        ...

    async def revoke(
        self,
        *,
        until: int,
        token_id: str | None = None,
        session_id: str | None = None,
        device_id: str | None = None,
        issued_before: int | None = None,
    ) -> None:
        """Refuse one token (``token_id``), or every token of a device issued at or
        before ``issued_before``, until the Unix second ``until``; shared by every process."""
        ...

    async def is_revoked(
        self, *, token_id: str | None, session_id: str, device_id: str, issued_at: int | None
    ) -> bool:
        """Whether a token with these claims has been revoked."""
        ...

    async def put_ticket(self, ticket_hash: str, record: bytes, *, expires_at: int) -> None:
        """Keep a handoff ticket's record (by the ticket's hash) until ``expires_at``."""
        ...

    async def claim_ticket(self, ticket_hash: str, user_id: str) -> tuple[str, bytes | None]:
        """Take a ticket for ``user_id``, atomically and once.

        ``("OK", record)`` removes it; ``("OTHER_USER", None)`` leaves it for its
        user; ``("GONE", None)`` when it was claimed, expired or never existed.
        """
        ...

    async def ping(self) -> float:
        """Check the backend; return its round-trip time in seconds."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background upkeep (expiry, reconnects) until cancelled; started by the lifespan."""
        ...
