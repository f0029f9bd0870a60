"""The mirror's version rules (docs/protocol.md §4 and §10), synchronously."""

from __future__ import annotations

from typing import Any

from syncbridge.client.mirror import Change, Mirror, Resynced


def change(version: int, key: str = "k", value: Any = None, op: str = "SET") -> Change:
    return Change(key=key, value=value, operation=op, version=version)


def test_mirror_applies_the_next_version_and_ignores_known_ones() -> None:
    mirror = Mirror()
    events, gap = mirror.apply(change(1, value="a"))
    assert (events, gap) == ([change(1, value="a")], False)
    assert mirror.apply(change(1, value="again")) == ([], False)
    assert mirror.state == {"k": "a"}
    mirror.apply(change(2, op="DELETE"))
    assert (mirror.state, mirror.version) == ({}, 2)


def test_mirror_holds_a_gap_and_releases_it_after_a_snapshot() -> None:
    mirror = Mirror()
    events, gap = mirror.apply(change(3, key="c", value=3))
    assert (events, gap) == ([], True)
    assert mirror.version == 0
    events = mirror.apply_snapshot({"state_data": {"a": 1}, "version": 2}, reason="gap")
    assert events == [
        Resynced(state={"a": 1}, version=2, reason="gap"),
        change(3, key="c", value=3),
    ]
    assert (mirror.state, mirror.version) == ({"a": 1, "c": 3}, 3)


def test_mirror_trusts_a_lower_snapshot_version_after_a_session_restart() -> None:
    mirror = Mirror(state={"old": 1}, version=40)
    mirror.apply_snapshot({"state_data": {}, "version": 0}, reason="snapshot")
    assert (mirror.state, mirror.version) == ({}, 0)


def test_mirror_resume_changes_apply_in_order_and_report_what_was_replayed() -> None:
    mirror = Mirror(state={"a": 1}, version=1)
    payload = {
        "mode": "changes",
        "from_version": 1,
        "version": 3,
        "changes": [
            {"key": "b", "value": 2, "operation": "SET", "version": 2, "device_id": "d2"},
            {"key": "a", "value": None, "operation": "DELETE", "version": 3},
        ],
    }
    events, replayed, gap = mirror.apply_resume(payload)
    assert not gap
    assert [c.version for c in replayed] == [2, 3]
    assert replayed[0].device_id == "d2"
    assert len(events) == 2
    assert (mirror.state, mirror.version) == ({"b": 2}, 3)


def test_mirror_resume_snapshot_replaces_everything() -> None:
    mirror = Mirror(state={"a": 1}, version=1)
    payload = {"mode": "snapshot", "snapshot": {"state_data": {"z": 9}, "version": 1250}}
    events, replayed, gap = mirror.apply_resume(payload)
    assert (replayed, gap) == ([], False)
    assert events == [Resynced(state={"z": 9}, version=1250, reason="snapshot")]


def test_mirror_broadcast_before_resume_is_covered_by_it() -> None:
    # A broadcast (v3) can arrive before the Resume that replays v2..v3.
    mirror = Mirror(version=1)
    assert mirror.apply(change(3, key="c", value=3)) == ([], True)
    payload = {
        "mode": "changes",
        "version": 3,
        "changes": [
            {"key": "b", "value": 2, "operation": "SET", "version": 2},
            {"key": "c", "value": 3, "operation": "SET", "version": 3},
        ],
    }
    events, _, gap = mirror.apply_resume(payload)
    assert not gap
    assert [e.version for e in events if isinstance(e, Change)] == [2, 3]
    assert (mirror.state, mirror.version, mirror.held) == ({"b": 2, "c": 3}, 3, {})
