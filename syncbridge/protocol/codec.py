"""The wire codec: JSON text frames in, validated Envelopes out; replies encoded once.

This is the one cattrs converter for the wire. It is strict on purpose: a
string where an integer belongs is an error that names the field, never a
silent ``int("5")``.
"""

from __future__ import annotations

from typing import Any, Final

import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from syncbridge.errors import InvalidMessage, NestingTooDeep, UnknownType
from syncbridge.protocol.messages import (
    CLIENT_TYPES,
    Envelope,
    InvalidField,
    MessageType,
    Operation,
    Request,
)

__all__ = ["MAX_NESTING_DEPTH", "converter", "decode", "encode", "error_payload", "nesting_exceeds"]

converter: Final = make_converter(forbid_extra_keys=False)

#: Deepest nesting of objects and arrays in one inbound message, the message
#: object itself being level 1. orjson refuses to encode beyond 254 levels, so
#: anything accepted deeper could never be echoed, acknowledged, broadcast or
#: replayed; 64 leaves room for the envelopes a value is served back in
#: (a Resume nests a value 4 levels down) and is far beyond any real state.
MAX_NESTING_DEPTH: Final = 64


def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_json_type(value)}")
    return value


def _operation(value: Any, _type: Any) -> Operation:
    if not isinstance(value, str):
        raise TypeError(f'expected "SET" or "DELETE", got {_json_type(value)}')
    try:
        return Operation(value.upper())
    except ValueError:
        raise ValueError(f'expected "SET" or "DELETE", got {value!r}') from None


def _strict_int(value: Any, _type: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {_json_type(value)}")
    return value


converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(Operation, _operation)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _describe_problem(exc: BaseException, _type: Any) -> str:
    """Say what is wrong with one field, in words a client developer can act on."""
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    return f"invalid value ({type(exc).__name__})"


def _correlation_id(message: dict[str, Any]) -> Any:
    return message.get("correlation_id")


def _problem_field(exc: cattrs.BaseValidationError, problems: list[str]) -> str:
    # A validator runs inside the class's __init__, so cattrs can only place its
    # error at "payload"; the InvalidField it raised knows the field.
    for inner in exc.exceptions:
        if isinstance(inner, InvalidField):
            return f"payload.{inner.field}"
    return problems[0].rpartition(" @ ")[2] if problems else "payload"


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether objects and arrays in ``value`` nest deeper than ``limit`` levels.

    ``value`` itself is level 1. Iterative, so a hostile depth costs no Python
    recursion; stops at the first container found too deep.
    """
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _too_deep(cid: Any) -> NestingTooDeep:
    return NestingTooDeep(
        f"message nests objects/arrays deeper than {MAX_NESTING_DEPTH} levels",
        details={"limit_depth": MAX_NESTING_DEPTH},
        # The correlation id is echoed only if it can itself be encoded back.
        correlation_id=None if nesting_exceeds([cid], MAX_NESTING_DEPTH) else cid,
    )


def _could_be_too_deep(frame: str | bytes) -> bool:
    # Cheap pre-check on the raw text: fewer opening brackets than the limit
    # (brackets inside strings only add to the count) cannot nest too deep.
    if isinstance(frame, str):
        return frame.count("{") + frame.count("[") > MAX_NESTING_DEPTH
    return frame.count(b"{") + frame.count(b"[") > MAX_NESTING_DEPTH


def decode(frame: str | bytes) -> Envelope:
    """Parse and validate one inbound frame.

    Raises :class:`InvalidMessage` (or its :class:`NestingTooDeep`) or
    :class:`UnknownType`, carrying the message's correlation id when it could
    be read, so the reply can echo it.
    """
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own cap, 1024 levels
            raise _too_deep(None) from None
        raise InvalidMessage(f"invalid JSON: {exc}") from None
    if not isinstance(message, dict):
        if _could_be_too_deep(frame) and nesting_exceeds(message, MAX_NESTING_DEPTH):
            raise _too_deep(None)
        raise InvalidMessage(f"a message must be a JSON object, got {_json_type(message)}")
    cid = _correlation_id(message)
    # Checked before anything else: nothing deeper may be stored, echoed or
    # logged, since it could not be encoded again (issue 12, item 4).
    if _could_be_too_deep(frame) and nesting_exceeds(message, MAX_NESTING_DEPTH):
        raise _too_deep(cid)

    raw_type = message.get("type")
    if raw_type is None:
        raise InvalidMessage(
            "type is required (an integer)", details={"field": "type"}, correlation_id=cid
        )
    if not isinstance(raw_type, int) or isinstance(raw_type, bool):
        raise InvalidMessage(
            f"type must be an integer, got {_json_type(raw_type)}",
            details={"field": "type"},
            correlation_id=cid,
        )
    try:
        msg_type = MessageType(raw_type)
    except ValueError:
        raise UnknownType(
            f"unknown message type {raw_type}: clients may send 1, 3, 5, 7 or 12",
            details={"field": "type", "type": raw_type},
            correlation_id=cid,
        ) from None
    request_class = CLIENT_TYPES.get(msg_type)
    if request_class is None:
        raise UnknownType(
            f"message type {raw_type} ({msg_type.name}) is not accepted from clients; "
            "clients may send 1, 3, 5, 7 or 12",
            details={"field": "type", "type": raw_type},
            correlation_id=cid,
        )

    timestamp = message.get("timestamp")
    if timestamp is not None and (
        not isinstance(timestamp, int | float) or isinstance(timestamp, bool)
    ):
        raise InvalidMessage(
            f"timestamp must be Unix seconds (a number), got {_json_type(timestamp)}",
            details={"field": "timestamp"},
            correlation_id=cid,
        )

    payload = message.get("payload")
    if payload is None:
        payload = {}  # v1: a missing or null payload is an empty one
    elif not isinstance(payload, dict):
        raise InvalidMessage(
            f"payload must be a JSON object, got {_json_type(payload)}",
            details={"field": "payload"},
            correlation_id=cid,
        )
    try:
        request: Request = converter.structure(payload, request_class)
    except cattrs.BaseValidationError as exc:
        problems = cattrs.transform_error(exc, path="payload", format_exception=_describe_problem)
        field = _problem_field(exc, problems)
        raise InvalidMessage(
            f"invalid {msg_type.name} payload: " + "; ".join(problems),
            details={"field": field},
            correlation_id=cid,
        ) from None
    return Envelope(
        type=msg_type,
        request=request,
        timestamp=timestamp,
        correlation_id=cid,
    )


def encode(
    msg_type: MessageType,
    payload: dict[str, Any] | orjson.Fragment,
    *,
    timestamp: int,
    correlation_id: Any = None,
    session_id: str | None = None,
    user_id: str | None = None,
    device_id: str | None = None,
) -> str:
    """Encode one server message as a JSON text frame.

    Optional envelope fields are left out when unset rather than sent as null,
    which keeps frames small and matches what v1 clients parse.
    """
    message: dict[str, Any] = {"type": int(msg_type), "timestamp": timestamp, "payload": payload}
    if session_id is not None:
        message["session_id"] = session_id
    if user_id is not None:
        message["user_id"] = user_id
    if device_id is not None:
        message["device_id"] = device_id
    if correlation_id is not None:
        message["correlation_id"] = correlation_id
    return orjson.dumps(message).decode()


def error_payload(
    status: int, error_code: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The payload of an Error (6): v1's ``{code, message, details?}`` plus ``error_code``."""
    payload: dict[str, Any] = {"code": status, "message": message, "error_code": error_code}
    if details:
        payload["details"] = details
    return payload
