"""Sans-IO: base_version on StateUpdate, multi-key writes as one version, the diff."""

from __future__ import annotations

import orjson
import pytest

from syncbridge.errors import InvalidMessage, LimitExceeded, VersionConflict
from syncbridge.protocol.codec import decode
from syncbridge.protocol.messages import Operation, StateUpdateRequest
from syncbridge.protocol.session import Edit, SessionState
from syncbridge.state_writer import diff

T0 = 1_767_225_600


def frame(payload: dict[str, object]) -> str:
    return orjson.dumps({"type": 5, "payload": payload}).decode()


def test_state_update_base_version_is_optional_and_strict() -> None:
    request = decode(frame({"key": "a", "value": 1, "base_version": 3})).request
    assert isinstance(request, StateUpdateRequest)
    assert request.base_version == 3
    plain = decode(frame({"key": "a", "value": 1})).request
    assert isinstance(plain, StateUpdateRequest)
    assert plain.base_version is None
    for bad in ("3", -1, 1.5, True):
        with pytest.raises(InvalidMessage):
            decode(frame({"key": "a", "value": 1, "base_version": bad}))


def test_session_state_apply_with_base_version_conflict_changes_nothing() -> None:
    state = SessionState(session_id="s", history_size=10)
    state.apply("a", 1, Operation.SET, now=T0, max_state_bytes=100, max_keys=10)
    with pytest.raises(VersionConflict) as conflict:
        state.apply("a", 2, Operation.SET, now=T0, max_state_bytes=100, max_keys=10, base_version=0)
    assert conflict.value.current_version == 1
    assert (state.version, state.data) == (1, {"a": 1})


def test_session_state_apply_many_is_one_version_one_record() -> None:
    state = SessionState(session_id="s", history_size=10)
    state.apply("gone", 1, Operation.SET, now=T0, max_state_bytes=100, max_keys=10)
    commit = state.apply_many(
        (Edit.delete("gone"), Edit.set("b", [1]), Edit.set("c", None)),
        now=T0 + 1,
        max_state_bytes=100,
        max_keys=10,
        user_id="u",
        device_id="d",
    )
    assert commit.version == 2
    assert state.data == {"b": [1], "c": None}
    assert state.total_bytes == len("b") + len("[1]") + len("c") + len("null")
    assert [(c.version, c.key) for c in state.history] == [
        (1, "gone"),
        (2, "gone"),
        (2, "b"),
        (2, "c"),
    ]
    changes = state.changes_since(1)
    assert changes is not None
    assert [c.operation for c in changes] == [Operation.DELETE, Operation.SET, Operation.SET]
    with pytest.raises(LimitExceeded):
        state.apply_many((Edit.set("big", "x" * 200),), now=T0, max_state_bytes=100, max_keys=10)
    assert state.version == 2


def test_diff_deletes_removed_and_sets_changed_keys_only() -> None:
    before = {"same": b"1", "changed": b'"old"', "gone": b"true"}
    edits = diff(before, {"same": 1, "changed": "new", "added": {"x": 1}})
    assert [(e.key, e.operation, e.raw) for e in edits] == [
        ("gone", Operation.DELETE, b"null"),
        ("changed", Operation.SET, b'"new"'),
        ("added", Operation.SET, b'{"x":1}'),
    ]
    assert diff(before, {"same": 1, "changed": "old", "gone": True}) == ()
