"""The SyncBridge client, on trio-websocket.

Two levels:

- :func:`open_client` yields a :class:`Client`: one connection, requests paired
  with their replies, pushes in arrival order. It never reconnects.
- :func:`open_sync_client` yields a :class:`SyncClient`: a session kept in sync
  through disconnects, server restarts and token expiry, with a local mirror
  (``state``/``version``), an event stream and acknowledged updates.
"""

from syncbridge.client.backoff import Backoff
from syncbridge.client.connection import Client, open_client
from syncbridge.client.errors import (
    AuthFailed,
    ConflictError,
    ConnectFailed,
    Disconnected,
    QueueFull,
    ServerError,
    SyncClosed,
)
from syncbridge.client.mirror import (
    Change,
    Conflict,
    ConnectionLost,
    Event,
    Reconnected,
    Resynced,
    TokenRefreshed,
)
from syncbridge.client.outbox import PendingUpdate
from syncbridge.client.sync import SyncClient, open_sync_client

__all__ = [
    "AuthFailed",
    "Backoff",
    "Change",
    "Client",
    "Conflict",
    "ConflictError",
    "ConnectFailed",
    "ConnectionLost",
    "Disconnected",
    "Event",
    "PendingUpdate",
    "QueueFull",
    "Reconnected",
    "Resynced",
    "ServerError",
    "SyncClient",
    "SyncClosed",
    "TokenRefreshed",
    "open_client",
    "open_sync_client",
]
