"""Updates waiting for the server's ack, and what becomes of them across a reconnect.

An update is *queued* until a connection is up, then *in flight* until its ack
(or Error) arrives. When the connection drops, in-flight updates go back to the
head of the queue, marked "maybe applied": the store may have taken one whose
ack was lost. After the next Resume, :meth:`Outbox.reconcile` decides for each:

1. applied: the replayed changes show it (same key, operation and value, from
   this device, after its base version) or, after a snapshot, the server holds
   exactly its value -> acknowledged with that version, not sent again;
2. conflict: the key's server value differs from the value the update was based
   on (what the mirror held when it was issued) -> not sent, ConflictError;
   later updates of the same key share the fate of the first;
3. otherwise it is sent (again).

The server will accept ``base_version`` in StateUpdate to check this itself;
until then the check is the client's, and a write racing the resend can still
win on the server (last writer wins there).
"""

from __future__ import annotations

import collections
from typing import Any, Final

import attrs
import trio

from syncbridge.client.errors import ConflictError, QueueFull
from syncbridge.client.mirror import Change, Conflict, Mirror

__all__ = ["MISSING", "Outbox", "PendingUpdate"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()  # a key that is absent (distinct from a None value)


@attrs.define(eq=False)
class PendingUpdate:
    """One update issued by the application; await :meth:`wait` for its version."""

    key: str
    value: Any
    operation: str
    base_version: int
    base_value: Any
    cid: str | None = None
    maybe_applied: bool = False
    version: int | None = None
    error: BaseException | None = None
    done: trio.Event = attrs.Factory(trio.Event)

    @property
    def acknowledged(self) -> bool:
        """Whether the server acknowledged it (``version`` is then its version)."""
        return self.version is not None

    async def wait(self) -> int:
        """The version the server gave it; raises why it was not applied otherwise."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.version is not None
        return self.version

    def resolve(self, version: int) -> None:
        self.version = version
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


def _intended(update: PendingUpdate) -> Any:
    return MISSING if update.operation == "DELETE" else update.value


class Outbox:
    """The bounded queue of unacknowledged updates of one synchronised client."""

    def __init__(self, *, max_queued: int, max_in_flight: int) -> None:
        self.queued: collections.deque[PendingUpdate] = collections.deque()
        self.in_flight: dict[str, PendingUpdate] = {}
        self._max_queued = max_queued
        self._max_in_flight = max_in_flight

    def __len__(self) -> int:
        return len(self.queued) + len(self.in_flight)

    def add(self, update: PendingUpdate) -> None:
        """Queue an update, or raise QueueFull when ``max_queued`` are unacknowledged."""
        if len(self) >= self._max_queued:
            raise QueueFull(f"{len(self)} updates are waiting for the server already")
        self.queued.append(update)

    def next_to_send(self) -> PendingUpdate | None:
        """The next queued update, if the in-flight window has room."""
        if not self.queued or len(self.in_flight) >= self._max_in_flight:
            return None
        return self.queued.popleft()

    def mark_sent(self, update: PendingUpdate, cid: str) -> None:
        update.cid = cid
        self.in_flight[cid] = update

    def settle(self, cid: str) -> PendingUpdate | None:
        """The in-flight update with this correlation id, now answered."""
        return self.in_flight.pop(cid, None)

    def connection_lost(self) -> None:
        """In-flight updates return to the head of the queue, in their order."""
        returning = sorted(self.in_flight.values(), key=lambda u: int((u.cid or "u0")[1:]))
        for update in reversed(returning):
            update.maybe_applied = True
            update.cid = None
            self.queued.appendleft(update)
        self.in_flight.clear()

    def reconcile(
        self, mirror: Mirror, replayed: list[Change], device_id: str | None
    ) -> list[Conflict]:
        """After a Resume: acknowledge applied updates, fail conflicting ones (see module doc)."""
        conflicts: list[Conflict] = []
        decided: dict[str, bool] = {}  # key -> its first pending update conflicted
        keep: collections.deque[PendingUpdate] = collections.deque()
        for update in self.queued:
            if update.maybe_applied and (version := _applied(update, mirror, replayed, device_id)):
                update.resolve(version)
                continue
            if update.key not in decided:
                server = mirror.state.get(update.key, MISSING)
                decided[update.key] = server != update.base_value
            if decided[update.key]:
                server_value = mirror.state.get(update.key)
                update.fail(ConflictError(update.key, server_value, mirror.version))
                conflicts.append(
                    Conflict(
                        key=update.key,
                        attempted=update.value,
                        operation=update.operation,
                        server_value=server_value,
                        version=mirror.version,
                    )
                )
                continue
            keep.append(update)
        self.queued = keep
        return conflicts

    def fail_all(self, error: BaseException) -> None:
        for update in [*self.in_flight.values(), *self.queued]:
            if not update.done.is_set():
                update.fail(error)
        self.in_flight.clear()
        self.queued.clear()


def _applied(
    update: PendingUpdate, mirror: Mirror, replayed: list[Change], device_id: str | None
) -> int | None:
    """The version at which a maybe-applied update took effect, if it did."""
    value = None if update.operation == "DELETE" else update.value
    for change in replayed:
        if (
            change.version > update.base_version
            and change.device_id == device_id
            and change.key == update.key
            and change.operation == update.operation
            and change.value == value
        ):
            return change.version
    if not replayed and mirror.state.get(update.key, MISSING) == _intended(update):
        # After a snapshot there is no history to look at; the server holding
        # exactly this value is the outcome the update asked for.
        return mirror.version
    return None
