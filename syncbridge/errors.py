"""SyncBridge's error tree and WebSocket close codes.

::

    SyncBridgeError
    ├── ConfigError            bad configuration; start-up stops with one line
    ├── RequestError           a client request that is answered with an Error (6)
    │   ├── InvalidMessage       400 INVALID_MESSAGE (bad JSON, wrong field type, ...)
    │   │   └── NestingTooDeep     400 NESTING_TOO_DEEP (JSON nested beyond the limit)
    │   ├── UnknownType          400 UNKNOWN_TYPE
    │   ├── NotAuthenticated     403 NOT_AUTHENTICATED ("Not authenticated")
    │   ├── PermissionDenied     403 FORBIDDEN
    │   ├── RateLimited          429 RATE_LIMITED
    │   ├── LimitExceeded        413 STATE_TOO_LARGE, 413 TOO_MANY_KEYS, 429 TOO_MANY_DEVICES
    │   ├── VersionConflict      409 VERSION_CONFLICT (a write based on an older version)
    │   └── StoreUnavailable     503 STORE_UNAVAILABLE
    ├── AuthenticationError    a token that is refused: AuthFailure (9) {code: 401}
    └── ProtocolViolation      abuse that closes the socket with its close code

A request error is answered and changes nothing; the socket stays open.
Close codes follow the convention described in docs/protocol.md: 4000-4099 mean
"transient, reconnect with backoff and resume", 4400-4499 mean "do not reconnect
until the cause (token, configuration) is fixed".
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "AuthenticationError",
    "CloseCode",
    "ConfigError",
    "InvalidMessage",
    "LimitExceeded",
    "NestingTooDeep",
    "NotAuthenticated",
    "PermissionDenied",
    "ProtocolViolation",
    "RateLimited",
    "RequestError",
    "StoreUnavailable",
    "SyncBridgeError",
    "UnknownType",
    "VersionConflict",
]


class CloseCode(enum.IntEnum):
    """WebSocket close codes SyncBridge sends (each documented in docs/protocol.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down or restarting: reconnect
    MESSAGE_TOO_BIG = 1009  # inbound message over max_message_bytes
    INTERNAL_ERROR = 1011
    # 4000-4099: transient; reconnect with backoff and resume by version.
    SLOW_CONSUMER = 4000
    LIVENESS_TIMEOUT = 4001
    # 4400-4499: the client must change something before reconnecting.
    TOKEN_EXPIRED = 4401
    KICKED = 4403  # an operator closed this device's connections (POST /admin/kick)
    TOKEN_REVOKED = 4402  # the socket's token (or its device's tokens) was revoked
    DEVICE_REMOVED = 4409  # the device was removed from the session (HTTP API)
    SESSION_DELETED = 4410  # the session was deleted (HTTP API)
    AUTH_TIMEOUT = 4408
    FLOODING = 4429

    @property
    def reconnect(self) -> bool:
        """Whether a client should reconnect by itself (with backoff) after this close."""
        return self in _RECONNECT


_RECONNECT = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SLOW_CONSUMER,
        CloseCode.LIVENESS_TIMEOUT,
    }
)


class SyncBridgeError(Exception):
    """Root of every error SyncBridge raises on purpose."""


class ConfigError(SyncBridgeError):
    """Invalid configuration; the message is one line meant for the operator."""


class RequestError(SyncBridgeError):
    """A request that is answered with an Error (6) message and changes nothing."""

    status: int = 400
    error_code: str = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        correlation_id: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.correlation_id = correlation_id


class InvalidMessage(RequestError):
    """Malformed JSON, a non-object message or a field of the wrong type."""

    status = 400
    error_code = "INVALID_MESSAGE"


class NestingTooDeep(InvalidMessage):
    """A message whose JSON nests deeper than the codec's limit (docs/protocol.md §9)."""

    error_code = "NESTING_TOO_DEEP"


class UnknownType(RequestError):
    """A message type this server does not accept from clients."""

    status = 400
    error_code = "UNKNOWN_TYPE"


class NotAuthenticated(RequestError):
    """A protected request on a socket that has not authenticated (v1: 403)."""

    status = 403
    error_code = "NOT_AUTHENTICATED"


class PermissionDenied(RequestError):
    """An authenticated request for something the token does not grant."""

    status = 403
    error_code = "FORBIDDEN"


class RateLimited(RequestError):
    """The connection sent more messages than its rate allows; the message is dropped."""

    status = 429
    error_code = "RATE_LIMITED"


class LimitExceeded(RequestError):
    """A size or count limit (state size, devices per session) would be exceeded."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_code: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.status = status
        self.error_code = error_code


class VersionConflict(RequestError):
    """A write named the version it was based on and the session has moved on.

    Nothing was applied; ``current_version`` lets the writer re-read and retry.
    """

    status = 409
    error_code = "VERSION_CONFLICT"

    def __init__(self, *, current_version: int, base_version: int) -> None:
        super().__init__(
            f"the session is at version {current_version}, not {base_version}: "
            "re-read the state and retry",
            details={"current_version": current_version, "base_version": base_version},
        )
        self.current_version = current_version
        self.base_version = base_version


class StoreUnavailable(RequestError):
    """The store could not accept or answer the request; it was not acknowledged.

    A refused or unreachable store applied nothing. After a timeout the write may
    still have been applied (its answer was lost): clients resync by version.
    """

    status = 503
    error_code = "STORE_UNAVAILABLE"


class AuthenticationError(SyncBridgeError):
    """A token that cannot be accepted; answered with AuthFailure {code: 401}."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason  # a short label for logs and metrics: expired, signature, ...


class ProtocolViolation(SyncBridgeError):
    """Client behaviour that ends the connection with a specific close code."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{code.name} ({int(code)}): {reason}")
        self.code = code
        self.reason = reason
