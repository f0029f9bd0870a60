"""Message types and the payloads of requests clients send (HarmonyFlow v1, frozen)."""

from __future__ import annotations

import enum
from typing import Any, Final

import attrs

__all__ = [
    "ABSENT",
    "CLIENT_TYPES",
    "PROTECTED_TYPES",
    "AuthRequest",
    "DeviceListRequest",
    "Envelope",
    "HeartbeatRequest",
    "InvalidField",
    "MessageType",
    "Operation",
    "Request",
    "SnapshotRequest",
    "StateUpdateRequest",
]


class MessageType(enum.IntEnum):
    """The integer ``type`` of every v1 message; new types are additive from 15 up."""

    UNKNOWN = 0
    HEARTBEAT = 1
    HEARTBEAT_ACK = 2
    SNAPSHOT_REQUEST = 3
    SNAPSHOT_RESPONSE = 4
    STATE_UPDATE = 5
    ERROR = 6
    AUTH = 7
    AUTH_SUCCESS = 8
    AUTH_FAILURE = 9
    DEVICE_JOINED = 10
    DEVICE_LEFT = 11
    DEVICE_LIST = 12
    BROADCAST = 13
    ADMIN_UPDATE = 14  # reserved by v1; deliberately not implemented (no content push)
    RESUME = 15  # SyncBridge extension: reply to Auth with last_version


class Operation(enum.StrEnum):
    """What a StateUpdate does to its key."""

    SET = "SET"
    DELETE = "DELETE"


class _Absent:
    """Marks a field the client did not send (distinct from an explicit ``null``)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Final = _Absent()


class InvalidField(ValueError):
    """A payload field whose value breaks a rule; ``field`` names it for the error reply."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


MAX_NAME_CHARS: Final = 256
MAX_KEY_CHARS: Final = 1024


def _max_chars(limit: int) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and len(value) > limit:
            raise InvalidField(
                attribute.name, f"{attribute.name} is longer than {limit} characters"
            )

    return check


def _not_negative(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise InvalidField(attribute.name, f"{attribute.name} must not be negative")


def _non_empty(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise InvalidField(attribute.name, f"{attribute.name} must not be empty")


@attrs.frozen(kw_only=True)
class HeartbeatRequest:
    """Heartbeat (1): answered with HeartbeatAck, allowed before authentication."""

    client_time: Any = None


@attrs.frozen(kw_only=True)
class AuthRequest:
    """Auth (7): a JWT; identity comes only from its verified claims."""

    # Kept as sent: v1 answers a missing, null or non-string token with
    # AuthFailure (401), which TokenAuthority.verify raises, not with a 400.
    token: Any = None
    device_type: str | None = attrs.field(default=None, validator=_max_chars(MAX_NAME_CHARS))
    device_name: str | None = attrs.field(default=None, validator=_max_chars(MAX_NAME_CHARS))
    # SyncBridge extension: the last version this client holds; the server
    # answers with Resume (15) carrying what it missed.
    last_version: int | None = attrs.field(default=None, validator=_not_negative)


@attrs.frozen(kw_only=True)
class SnapshotRequest:
    """SnapshotRequest (3): the state of the token's own session."""

    session_id: str | None = None  # v1 clients may name their session; any other is 403


@attrs.frozen(kw_only=True)
class StateUpdateRequest:
    """StateUpdate (5): set ``key`` to ``value`` or delete it."""

    key: str = attrs.field(validator=[_non_empty, _max_chars(MAX_KEY_CHARS)])
    value: Any = ABSENT
    operation: Operation = Operation.SET
    # SyncBridge extension: the version this change was based on; when the
    # session has moved on, the change is refused with 409 VERSION_CONFLICT.
    # Absent or null: last writer wins (v1).
    base_version: int | None = attrs.field(default=None, validator=_not_negative)

    def __attrs_post_init__(self) -> None:
        if self.operation is Operation.SET and self.value is ABSENT:
            raise InvalidField(
                "value", "value is required when operation is SET (null is a valid value)"
            )


@attrs.frozen(kw_only=True)
class DeviceListRequest:
    """DeviceList (12) sent by a client: the devices of its session."""


Request = HeartbeatRequest | AuthRequest | SnapshotRequest | StateUpdateRequest | DeviceListRequest

#: Request class for each type a client may send.
CLIENT_TYPES: Final[dict[MessageType, type[Request]]] = {
    MessageType.HEARTBEAT: HeartbeatRequest,
    MessageType.AUTH: AuthRequest,
    MessageType.SNAPSHOT_REQUEST: SnapshotRequest,
    MessageType.STATE_UPDATE: StateUpdateRequest,
    MessageType.DEVICE_LIST: DeviceListRequest,
}

#: Types that need an authenticated connection (v1: 403 "Not authenticated" before).
PROTECTED_TYPES: Final = frozenset(
    {MessageType.SNAPSHOT_REQUEST, MessageType.STATE_UPDATE, MessageType.DEVICE_LIST}
)


@attrs.frozen(kw_only=True)
class Envelope:
    """One decoded client message: its type, validated payload and correlation id."""

    type: MessageType
    request: Request
    timestamp: float | None = None
    correlation_id: Any = None
