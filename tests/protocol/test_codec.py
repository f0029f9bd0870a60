"""decode()/encode() of the v1 wire codec: every client type, every way a frame can be wrong."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from syncbridge.errors import InvalidMessage, NestingTooDeep, RequestError, UnknownType
from syncbridge.protocol.codec import (
    MAX_NESTING_DEPTH,
    decode,
    encode,
    error_payload,
    nesting_exceeds,
)
from syncbridge.protocol.messages import (
    ABSENT,
    AuthRequest,
    DeviceListRequest,
    HeartbeatRequest,
    MessageType,
    Operation,
    SnapshotRequest,
    StateUpdateRequest,
)

CID = "corr-42"


def frame(**message: Any) -> str:
    return orjson.dumps(message).decode()


def refused(raw: str | bytes, cls: type[RequestError] = InvalidMessage) -> RequestError:
    """Decode ``raw`` expecting ``cls`` (exactly), and check the 400 reply it carries."""
    with pytest.raises(cls) as info:
        decode(raw)
    exc = info.value
    assert type(exc) is cls
    assert exc.status == 400
    assert exc.error_code == ("UNKNOWN_TYPE" if cls is UnknownType else "INVALID_MESSAGE")
    return exc


def refused_field(field: str, cls: type[RequestError] = InvalidMessage, **message: Any) -> str:
    """A refused message whose error names ``field`` and carries the correlation id."""
    exc = refused(frame(correlation_id=CID, **message), cls)
    assert exc.details is not None
    assert exc.details["field"] == field
    assert field.rpartition(".")[2] in exc.message
    assert exc.correlation_id == CID
    return exc.message


# --- valid client messages -------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "payload", "expected"),
    [
        (1, {"client_time": 1_700_000_000_123}, HeartbeatRequest(client_time=1_700_000_000_123)),
        (3, {}, SnapshotRequest()),
        (3, {"session_id": "s1"}, SnapshotRequest(session_id="s1")),
        (
            5,
            {"key": "k", "value": {"a": [1, 2.5]}},
            StateUpdateRequest(key="k", value={"a": [1, 2.5]}),
        ),
        (
            7,
            {"token": "t.o.k", "device_type": "web"},
            AuthRequest(token="t.o.k", device_type="web"),
        ),
        (12, {}, DeviceListRequest()),
    ],
)
def test_decode_valid_client_types(type_: int, payload: dict[str, Any], expected: Any) -> None:
    envelope = decode(frame(type=type_, timestamp=1_700_000_000, payload=payload, correlation_id=7))
    assert envelope.type == MessageType(type_)
    assert envelope.request == expected
    assert envelope.timestamp == 1_700_000_000
    assert envelope.correlation_id == 7


def test_decode_accepts_bytes_and_ignores_extra_fields() -> None:
    raw = b'{"type": 7, "payload": {"token": "t", "extra": 1}, "session_id": "spoofed"}'
    envelope = decode(raw)
    assert envelope.request == AuthRequest(token="t")


def test_decode_heartbeat_client_time_any_json_and_absent() -> None:
    assert decode(frame(type=1, payload={"client_time": [1, "x"]})).request == HeartbeatRequest(
        client_time=[1, "x"]
    )
    assert decode(frame(type=1, payload={})).request == HeartbeatRequest(client_time=None)


def test_decode_timestamp_missing_is_accepted() -> None:
    envelope = decode(frame(type=1, payload={}))
    assert envelope.timestamp is None
    assert envelope.correlation_id is None


def test_decode_timestamp_float_is_accepted() -> None:
    assert decode(frame(type=1, timestamp=1_700_000_000.25)).timestamp == 1_700_000_000.25


@pytest.mark.parametrize("type_", [1, 3, 12])
@pytest.mark.parametrize("payload", ["null", "missing"])
def test_decode_payload_null_or_missing_is_empty(type_: int, payload: str) -> None:
    message: dict[str, Any] = {"type": type_}
    if payload == "null":
        message["payload"] = None
    envelope = decode(frame(**message))
    assert envelope.type == MessageType(type_)
    assert (
        envelope.request
        == {1: HeartbeatRequest(), 3: SnapshotRequest(), 12: DeviceListRequest()}[type_]
    )


@pytest.mark.parametrize("payload", ["null", "missing"])
def test_decode_payload_null_or_missing_names_required_key(payload: str) -> None:
    message: dict[str, Any] = {"type": 5}
    if payload == "null":
        message["payload"] = None
    text = refused_field("payload.key", **message)
    assert "missing" in text


@pytest.mark.parametrize("payload", ["null", "missing"])
def test_decode_payload_null_or_missing_auth_keeps_token_absent(payload: str) -> None:
    # v1 answers a missing token with AuthFailure (401), which TokenAuthority.verify
    # raises; the codec must therefore let it through rather than answer 400.
    message: dict[str, Any] = {"type": 7}
    if payload == "null":
        message["payload"] = None
    assert decode(frame(**message)).request == AuthRequest(token=None)


def test_decode_state_update_value_null_is_a_value() -> None:
    request = decode(frame(type=5, payload={"key": "k", "value": None})).request
    assert request == StateUpdateRequest(key="k", value=None, operation=Operation.SET)
    assert request.value is None


@pytest.mark.parametrize("operation", ["DELETE", "delete", "Delete"])
def test_decode_state_update_delete_needs_no_value(operation: str) -> None:
    request = decode(frame(type=5, payload={"key": "k", "operation": operation})).request
    assert isinstance(request, StateUpdateRequest)
    assert request.operation is Operation.DELETE
    assert request.value is ABSENT


def test_decode_state_update_lowercase_set() -> None:
    request = decode(frame(type=5, payload={"key": "k", "value": 1, "operation": "set"})).request
    assert request == StateUpdateRequest(key="k", value=1, operation=Operation.SET)


@pytest.mark.parametrize("key", ["a.b/c", "ключ ✓", " ", "k" * 1024])
def test_decode_state_update_key_any_characters(key: str) -> None:
    assert decode(frame(type=5, payload={"key": key, "value": 0})).request == StateUpdateRequest(
        key=key, value=0
    )


def test_decode_auth_device_name_at_limit() -> None:
    request = decode(frame(type=7, payload={"token": "t", "device_name": "n" * 256})).request
    assert request == AuthRequest(token="t", device_name="n" * 256)


# --- frames that are not messages ------------------------------------------------------


@pytest.mark.parametrize("raw", ["{bad", "", '{"type": 1', "nope", b"\xff\xfe"])
def test_decode_invalid_json(raw: str | bytes) -> None:
    exc = refused(raw)
    assert "invalid JSON" in exc.message
    assert exc.correlation_id is None


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("[1, 2]", "an array"), ('"hello"', "a string"), ("42", "a number"), ("null", "null")],
)
def test_decode_non_object_message(raw: str, kind: str) -> None:
    exc = refused(raw)
    assert "JSON object" in exc.message
    assert kind in exc.message


# --- the type field --------------------------------------------------------------------


@pytest.mark.parametrize("message", [{}, {"type": None}])
def test_decode_type_missing(message: dict[str, Any]) -> None:
    assert "required" in refused_field("type", payload={}, **message)


@pytest.mark.parametrize(
    ("value", "kind"),
    [("5", "a string"), (5.0, "a number"), (1.5, "a number"), (True, "a boolean")],
)
def test_decode_type_not_an_integer(value: Any, kind: str) -> None:
    text = refused_field("type", type=value, payload={})
    assert "integer" in text
    assert kind in text


@pytest.mark.parametrize("value", [-1, 99, 15, 2**40])
def test_decode_type_unknown(value: int) -> None:
    with pytest.raises(UnknownType) as info:
        decode(frame(type=value, correlation_id=CID))
    exc = info.value
    assert (exc.status, exc.error_code) == (400, "UNKNOWN_TYPE")
    assert exc.details == {"field": "type", "type": value}
    assert str(value) in exc.message
    assert exc.correlation_id == CID


@pytest.mark.parametrize("value", [0, 2, 4, 6, 8, 9, 10, 11, 13, 14])
def test_decode_type_server_only(value: int) -> None:
    text = refused_field("type", UnknownType, type=value, payload={})
    assert MessageType(value).name in text
    assert "not accepted from clients" in text


# --- timestamp and payload -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("2024-01-01T00:00:00Z", "a string"),
        (True, "a boolean"),
        ([1], "an array"),
        ({}, "an object"),
    ],
)
def test_decode_timestamp_wrong_type(value: Any, kind: str) -> None:
    text = refused_field("timestamp", type=1, timestamp=value, payload={})
    assert kind in text


@pytest.mark.parametrize(
    ("value", "kind"), [([], "an array"), ("{}", "a string"), (3, "a number"), (False, "a boolean")]
)
@pytest.mark.parametrize("type_", [1, 3, 5, 7, 12])
def test_decode_payload_not_an_object(type_: int, value: Any, kind: str) -> None:
    text = refused_field("payload", type=type_, payload=value)
    assert kind in text


# --- StateUpdate fields ----------------------------------------------------------------


@pytest.mark.parametrize(("key", "kind"), [(5, "a number"), (None, "null"), (["k"], "an array")])
def test_decode_state_update_key_wrong_type(key: Any, kind: str) -> None:
    text = refused_field("payload.key", type=5, payload={"key": key, "value": 1})
    assert kind in text


def test_decode_state_update_key_empty() -> None:
    text = refused_field("payload.key", type=5, payload={"key": "", "value": 1})
    assert "empty" in text


def test_decode_state_update_key_too_long() -> None:
    text = refused_field("payload.key", type=5, payload={"key": "k" * 1025, "value": 1})
    assert "1024" in text


@pytest.mark.parametrize("operation", ["PATCH", "", "remove", 1, None, True])
def test_decode_state_update_operation_invalid(operation: Any) -> None:
    payload = {"key": "k", "value": 1, "operation": operation}
    text = refused_field("payload.operation", type=5, payload=payload)
    assert '"SET" or "DELETE"' in text


@pytest.mark.parametrize("payload", [{"key": "k"}, {"key": "k", "operation": "SET"}])
def test_decode_state_update_set_without_value(payload: dict[str, Any]) -> None:
    text = refused_field("payload.value", type=5, payload=payload)
    assert "required" in text


# --- Auth fields -----------------------------------------------------------------------


@pytest.mark.parametrize("token", [123, None, {}, ["t"], True])
def test_decode_auth_token_any_type_kept_for_verify(token: Any) -> None:
    request = decode(frame(type=7, payload={"token": token})).request
    assert isinstance(request, AuthRequest)
    assert request.token == token
    assert type(request.token) is type(token)


def test_decode_auth_token_missing_is_none() -> None:
    request = decode(frame(type=7, payload={"device_type": "web"})).request
    assert request == AuthRequest(token=None, device_type="web")


@pytest.mark.parametrize("field", ["device_name", "device_type"])
def test_decode_auth_device_field_too_long(field: str) -> None:
    text = refused_field(f"payload.{field}", type=7, payload={"token": "t", field: "n" * 257})
    assert "256" in text


def test_decode_auth_device_type_wrong_type() -> None:
    text = refused_field("payload.device_type", type=7, payload={"token": "t", "device_type": 3})
    assert "a number" in text


def test_decode_snapshot_session_id_wrong_type() -> None:
    refused_field("payload.session_id", type=3, payload={"session_id": 7})


def test_decode_error_carries_any_json_correlation_id() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(frame(type="1", correlation_id={"n": [1, 2]}))
    assert info.value.correlation_id == {"n": [1, 2]}


# --- encode ----------------------------------------------------------------------------


def test_encode_minimal_omits_unset_envelope_fields() -> None:
    text = encode(MessageType.HEARTBEAT_ACK, {"server_time": 5, "client_time": None}, timestamp=5)
    assert "\n" not in text
    assert orjson.loads(text) == {
        "type": 2,
        "timestamp": 5,
        "payload": {"server_time": 5, "client_time": None},
    }


def test_encode_with_every_envelope_field() -> None:
    text = encode(
        MessageType.STATE_UPDATE,
        {"key": "k", "value": [1, {"x": None}], "operation": "SET", "version": 3},
        timestamp=9,
        correlation_id=0,
        session_id="s",
        user_id="u",
        device_id="d",
    )
    message = orjson.loads(text)
    assert message == {
        "type": 5,
        "timestamp": 9,
        "payload": {"key": "k", "value": [1, {"x": None}], "operation": "SET", "version": 3},
        "session_id": "s",
        "user_id": "u",
        "device_id": "d",
        "correlation_id": 0,
    }
    assert isinstance(message["type"], int)


def test_encode_round_trips_through_decode_for_client_types() -> None:
    text = encode(
        MessageType.STATE_UPDATE, {"key": "k", "value": 1.5}, timestamp=1, correlation_id="c"
    )
    envelope = decode(text)
    assert envelope.request == StateUpdateRequest(key="k", value=1.5)
    assert envelope.correlation_id == "c"


def test_error_payload_shape() -> None:
    assert error_payload(403, "NOT_AUTHENTICATED", "Not authenticated") == {
        "code": 403,
        "message": "Not authenticated",
        "error_code": "NOT_AUTHENTICATED",
    }
    assert error_payload(400, "INVALID_MESSAGE", "bad", {"field": "type"}) == {
        "code": 400,
        "message": "bad",
        "error_code": "INVALID_MESSAGE",
        "details": {"field": "type"},
    }


def test_error_payload_from_decode_error() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(frame(type=5, payload={"key": "", "value": 1}))
    exc = info.value
    payload = error_payload(exc.status, exc.error_code, exc.message, exc.details)
    assert payload["code"] == 400
    assert payload["error_code"] == "INVALID_MESSAGE"
    assert payload["details"] == {"field": "payload.key"}


# --- nesting depth (issue 12, item 4) ----------------------------------------------------


def nested(depth: int) -> Any:
    """A JSON value whose containers nest ``depth`` levels (alternating arrays and objects)."""
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


def deep_frame(depth: int, field: str) -> str:
    """An otherwise valid message whose ``field`` holds a value ``depth`` levels deep."""
    inner = '{"n":' * depth + "0" + "}" * depth
    if field == "correlation_id":
        return '{"type":1,"payload":{},"correlation_id":' + inner + "}"
    if field == "client_time":
        return '{"type":1,"payload":{"client_time":' + inner + '},"correlation_id":"c"}'
    return '{"type":5,"payload":{"key":"k","value":' + inner + '},"correlation_id":"c"}'


def test_nesting_exceeds_counts_the_value_itself_as_level_one() -> None:
    assert not nesting_exceeds(0, 1)
    assert not nesting_exceeds(nested(64), 64)
    assert nesting_exceeds(nested(65), 64)
    assert not nesting_exceeds({"a": [], "b": {"c": [1]}}, 3)
    assert nesting_exceeds({"a": [], "b": {"c": [[1]]}}, 3)


def test_decode_accepts_the_deepest_allowed_message() -> None:
    # The message object is level 1, payload 2, so the value may nest 62 levels.
    envelope = decode(deep_frame(MAX_NESTING_DEPTH - 2, "value"))
    assert isinstance(envelope.request, StateUpdateRequest)
    # Served back in a Resume it sits two levels deeper, still far below orjson's 254.
    orjson.dumps({"payload": {"changes": [{"value": envelope.request.value}]}})
    with pytest.raises(NestingTooDeep):
        decode(deep_frame(MAX_NESTING_DEPTH - 1, "value"))


@pytest.mark.parametrize("field", ["value", "client_time", "correlation_id"])
@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH, 253, 255, 1024, 1025, 5000])
def test_decode_refuses_nesting_beyond_the_limit(field: str, depth: int) -> None:
    with pytest.raises(NestingTooDeep) as info:
        decode(deep_frame(depth, field))
    exc = info.value
    assert (exc.status, exc.error_code) == (400, "NESTING_TOO_DEEP")
    assert exc.details == {"limit_depth": MAX_NESTING_DEPTH}
    total = depth + (1 if field == "correlation_id" else 2)  # under the message and payload
    if total > 1024:
        assert exc.correlation_id is None  # orjson stopped parsing: nothing could be read
    elif field == "correlation_id":
        assert exc.correlation_id is None  # it could not be echoed
    else:
        assert exc.correlation_id == "c"
    # The reply is always encodable.
    error_payload(exc.status, exc.error_code, exc.message, exc.details)
    encode(MessageType.ERROR, {}, timestamp=1, correlation_id=exc.correlation_id)


def test_decode_refuses_deep_non_object_message() -> None:
    with pytest.raises(NestingTooDeep):
        decode("[" * 300 + "]" * 300)


def test_decode_brackets_inside_strings_do_not_count() -> None:
    envelope = decode(frame(type=5, payload={"key": "k", "value": "{[" * 500}))
    assert isinstance(envelope.request, StateUpdateRequest)
