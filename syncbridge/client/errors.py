"""The exceptions of the SyncBridge client; every one a caller may need to catch.

::

    ServerError            the server answered a request with Error (6) / AuthFailure (9)
    └── AuthFailed           the token was refused
    Disconnected           the connection closed (close code and reason)
    ConnectFailed          no WebSocket could be opened (a ConnectionError)
    ConflictError          a queued update's key changed on the server meanwhile (not sent)
    QueueFull              too many updates waiting for a connection
    SyncClosed             the synchronised client was closed before the update was acknowledged
"""

from __future__ import annotations

from typing import Any

from trio_websocket import ConnectionClosed

__all__ = [
    "AuthFailed",
    "ConflictError",
    "ConnectFailed",
    "Disconnected",
    "QueueFull",
    "ServerError",
    "SyncClosed",
    "disconnected_by",
]


class ServerError(Exception):
    """The server answered a request with Error (6) or AuthFailure (9)."""

    def __init__(self, message: dict[str, Any]) -> None:
        payload = message.get("payload") or {}
        self.code: int = payload.get("code", 0)
        self.error_code: str | None = payload.get("error_code")
        self.message: str = payload.get("message", "")
        self.details: dict[str, Any] | None = payload.get("details")
        self.raw = message
        super().__init__(f"{self.code} {self.error_code or ''}: {self.message}".strip())


class AuthFailed(ServerError):
    """The token was refused (AuthFailure, code 401)."""


class Disconnected(Exception):
    """The connection is closed; ``code`` and ``reason`` are the close frame's."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed: {code} {reason or ''}".strip())


class ConnectFailed(ConnectionError):
    """No WebSocket could be opened: unreachable, refused upgrade, or no answer in time.

    A ``ConnectionError`` (hence an ``OSError``); ``status_code`` is the HTTP
    status when the server refused the upgrade, else None.
    """

    def __init__(self, url: str, reason: str, *, status_code: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status_code = status_code
        super().__init__(f"cannot connect to {url}: {reason}")


def disconnected_by(exc: ConnectionClosed) -> Disconnected:
    """The Disconnected error for trio-websocket's ConnectionClosed."""
    reason = exc.reason
    return Disconnected(reason.code if reason else None, reason.reason if reason else None)


class ConflictError(Exception):
    """An update queued offline was not sent: its key changed on the server meanwhile.

    ``key`` is the key, ``server_value`` its value now (None when deleted),
    ``version`` the session's version when the conflict was found. Decide with the
    fresh ``client.state`` and issue the update again if it still applies.
    """

    def __init__(self, key: str, server_value: Any, version: int) -> None:
        self.key = key
        self.server_value = server_value
        self.version = version
        super().__init__(f"{key!r} changed on the server (now at version {version}); not sent")


class QueueFull(Exception):
    """The bounded queue of updates waiting for the connection is full."""


class SyncClosed(Exception):
    """The client was closed before the update was acknowledged; it may or may not apply."""
