"""Brokers carry session events (broadcasts, presence) to the right connections.

The local broker hands frames straight to this process's hub. The Redis broker
(``syncbridge.redis.broker``) publishes them to the session's channel, and its
relay delivers what arrives to local connections, so every process sees every
event of the sessions it serves, in the order Redis published them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from syncbridge.hub import Hub, Outbox

__all__ = ["Broker", "ControlHandler", "LocalBroker", "ReplyTicket"]

#: Receives control messages (encoded :class:`syncbridge.control.CloseOrder`).
ControlHandler = Callable[[bytes], None]


class ReplyTicket(Protocol):
    """The place of one writer's ack in its session's event stream (see
    :meth:`Broker.reply_in_order`)."""

    def abandon(self) -> None:
        """The change was not applied (or its outcome is unknown): no ack to place."""
        ...

    async def send(self, version: int, frame: str, outbox: Outbox, *, timeout: float) -> bool:
        """Queue the ack ``frame`` of ``version`` when the relay reaches that version;
        False if it did not within ``timeout`` (the writer must resync)."""
        ...


class Broker(Protocol):
    """Delivery of a session's events to its connections, wherever they are."""

    async def publish(
        self,
        session_id: str,
        frame: str,
        *,
        origin: int | None = None,
        exclude_device: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Deliver ``frame`` to the session's connections except the origin connection
        and every connection of ``exclude_device``."""
        ...

    def reply_in_order(self, session_id: str, origin: int) -> ReplyTicket | None:
        """For a change connection ``origin`` is about to make: a ticket that places its
        ack among the session's relayed events in version order, or None when the
        caller orders it itself (one process: the session lock does)."""
        ...

    async def watch(self, session_id: str) -> None:
        """This process has a connection in the session: receive its events (idempotent
        per call; each watch is matched by one unwatch)."""
        ...

    async def unwatch(self, session_id: str) -> None:
        """One fewer local connection in the session."""
        ...

    async def publish_control(self, message: bytes) -> None:
        """Deliver a control message to every process's control handler."""
        ...

    def on_control(self, handler: ControlHandler) -> None:
        """Set this process's control handler."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background delivery until cancelled; started by the app's lifespan."""
        ...


class LocalBroker:
    """One process: events go directly to the hub's outboxes."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._on_control: ControlHandler | None = None

    async def publish(
        self,
        session_id: str,
        frame: str,
        *,
        origin: int | None = None,
        exclude_device: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Fan out now, with the hub's slow-consumer rule."""
        await self._hub.publish(
            session_id,
            frame,
            exclude=() if origin is None else (origin,),
            exclude_device=exclude_device,
            timeout=timeout,
        )

    def reply_in_order(self, session_id: str, origin: int) -> ReplyTicket | None:
        """None: the service sends acks and fans out under the session lock."""
        return None

    async def publish_control(self, message: bytes) -> None:
        """This process is every process."""
        await trio.lowlevel.checkpoint()
        if self._on_control is not None:
            self._on_control(message)

    def on_control(self, handler: ControlHandler) -> None:
        """Set the handler."""
        self._on_control = handler

    async def watch(self, session_id: str) -> None:
        """Nothing to subscribe to."""

    async def unwatch(self, session_id: str) -> None:
        """Nothing to unsubscribe from."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """No background work."""
        task_status.started()
