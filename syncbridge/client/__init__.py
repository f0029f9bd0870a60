"""The SyncBridge client, on trio-websocket.

Two levels:

- :func:`open_client` yields a :class:`Client`: one connection, requests paired
  with their replies, pushes in arrival order. It never reconnects.
- :func:`open_sync_client` yields a :class:`SyncClient`: a session kept in sync
  through disconnects, server restarts and token expiry, with a local mirror
  (``state``/``version``), an event stream and acknowledged updates.
"""

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

__all__ = [
    "AuthFailed",
    "Client",
    "ConflictError",
    "ConnectFailed",
    "Disconnected",
    "QueueFull",
    "ServerError",
    "SyncClosed",
    "open_client",
]
