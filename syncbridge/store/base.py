"""The Store protocol: where session state lives, versioned and atomic per session."""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

from syncbridge.protocol.messages import Operation
from syncbridge.protocol.session import Change, Commit, Edit, Snapshot

__all__ = ["Origin", "Store"]


@attrs.frozen
class Origin:
    """Who made a change: the identity for the broadcast and the connection to skip
    (None for a write that came over HTTP: every connection is told)."""

    user_id: str
    device_id: str
    connection: int | None


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

    async def ping(self) -> float:
        """Check the backend; return its round-trip time in seconds."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background upkeep (expiry, reconnects) until cancelled; started by the lifespan."""
        ...
