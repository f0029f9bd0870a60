"""Whole-document writes (HTTP PUT, PATCH, restore) as ONE new version; transport-free.

A write computes the new document from the current snapshot, turns the
difference into per-key edits and hands them to the store as one version,
under the same per-session lock as WebSocket StateUpdates. Every device then
receives one StateUpdate per changed key (DELETE for removed keys), each
carrying the new version: exactly what a v1 client already applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import attrs
import orjson

from syncbridge.broker import Broker
from syncbridge.errors import NestingTooDeep, RequestError, VersionConflict
from syncbridge.metrics import Metrics
from syncbridge.protocol.codec import MAX_NESTING_DEPTH, encode, nesting_exceeds
from syncbridge.protocol.messages import MAX_KEY_CHARS, MessageType
from syncbridge.protocol.session import Commit, Edit, Snapshot, check_base_version
from syncbridge.store.base import Origin, Store
from syncbridge.store.locks import SessionLocks

__all__ = ["InvalidState", "StateWriter", "Written", "diff"]

log = logging.getLogger(__name__)

#: Another process may write between our read and our write (Redis): the store
#: then refuses ours and it is recomputed, at most this many times in all.
MAX_ATTEMPTS: Final = 5

Transform = Callable[[dict[str, Any]], dict[str, Any]]


class InvalidState(RequestError):
    """A state document that cannot be stored (empty or overlong key, too deep)."""

    status = 422
    error_code = "INVALID_STATE"


@attrs.frozen(kw_only=True)
class Written:
    """The outcome of a whole-document write: the session's version and state after it."""

    session_id: str
    version: int
    state: dict[str, Any]
    #: False when the document was already equal: no new version was made.
    changed: bool
    updated_at: int | None
    updated_by_user: str | None
    updated_by_device: str | None


def diff(before: dict[str, bytes], after: dict[str, Any]) -> tuple[Edit, ...]:
    """The edits that turn stored ``before`` (key -> JSON) into the document ``after``.

    Removed keys come first (as DELETEs), then changed and added keys in the
    document's order. Values are compared as their encoded JSON.
    """
    edits = [Edit.delete(key) for key in before if key not in after]
    for key, value in after.items():
        edit = Edit.set(key, value)
        if before.get(key) != edit.raw:
            edits.append(edit)
    return tuple(edits)


def validate_document(state: dict[str, Any]) -> None:
    """Refuse what a StateUpdate could not carry either (same key and depth rules)."""
    for key in state:
        if not key or len(key) > MAX_KEY_CHARS:
            raise InvalidState(
                f"state keys must be 1 to {MAX_KEY_CHARS} characters",
                details={"key": key[:64]},
            )
    # {"state": {key: value}} nests a value as deep as a StateUpdate frame does.
    if nesting_exceeds({"state": state}, MAX_NESTING_DEPTH):
        raise NestingTooDeep(
            f"the state nests objects/arrays deeper than {MAX_NESTING_DEPTH} levels",
            details={"limit_depth": MAX_NESTING_DEPTH},
        )


class StateWriter:
    """Reads and whole-document writes of session state, in the session's one version line."""

    def __init__(
        self,
        *,
        store: Store,
        broker: Broker,
        locks: SessionLocks,
        now: Callable[[], int],
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.locks = locks
        self._now = now
        self.metrics = metrics or Metrics()

    async def read(self, session_id: str) -> Snapshot:
        """The session's state now (version 0 and empty when never written)."""
        with self.metrics.store_operation("snapshot"):
            return await self.store.snapshot(session_id)

    async def write(
        self,
        session_id: str,
        transform: Transform,
        origin: Origin,
        *,
        base_version: int | None = None,
    ) -> Written:
        """Make ``transform(current document)`` the session's state as one new version.

        With ``base_version`` the write applies only to exactly that version
        (else :class:`VersionConflict`, nothing applied). ``transform`` may
        raise a RequestError to refuse; it may run more than once (when another
        process wrote in between), always on the latest state.
        """
        async with self.locks.hold(session_id):
            for _ in range(MAX_ATTEMPTS):
                before = await self.read(session_id)
                check_base_version(base_version, before.version)
                after = transform(before.state)
                validate_document(after)
                edits = diff(before.values, after)
                if not edits:
                    return Written(
                        session_id=session_id,
                        version=before.version,
                        state=after,
                        changed=False,
                        updated_at=before.updated_at,
                        updated_by_user=before.updated_by_user,
                        updated_by_device=before.updated_by_device,
                    )
                try:
                    with self.metrics.store_operation("apply_many"):
                        commit = await self.store.apply_many(
                            session_id, edits, origin, base_version=before.version
                        )
                except VersionConflict as exc:
                    if base_version is not None:
                        raise VersionConflict(
                            current_version=exc.current_version, base_version=base_version
                        ) from None
                    continue  # last writer wins: recompute on the newer state
                await self._fan_out(session_id, commit, origin)
                log.debug(
                    "write %s v%d (%d keys) by %s",
                    session_id,
                    commit.version,
                    len(edits),
                    origin.device_id,
                )
                return Written(
                    session_id=session_id,
                    version=commit.version,
                    state=after,
                    changed=True,
                    updated_at=commit.at,
                    updated_by_user=origin.user_id,
                    updated_by_device=origin.device_id,
                )
        current = (await self.read(session_id)).version
        raise VersionConflict(current_version=current, base_version=before.version)

    async def _fan_out(self, session_id: str, commit: Commit, origin: Origin) -> None:
        """One StateUpdate per edit, in order, each with the commit's version."""
        if self.store.publishes:
            return  # the store's script published them with the write
        for edit in commit.edits:
            payload = orjson.Fragment(
                orjson.dumps(
                    {
                        "key": edit.key,
                        "value": orjson.Fragment(edit.raw),
                        "operation": edit.operation.value,
                        "version": commit.version,
                    }
                )
            )
            frame = encode(
                MessageType.STATE_UPDATE,
                payload,
                timestamp=self._now(),
                session_id=session_id,
                user_id=origin.user_id,
                device_id=origin.device_id,
            )
            await self.broker.publish(session_id, frame, origin=origin.connection)
