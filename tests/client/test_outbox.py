"""What becomes of unacknowledged updates across a reconnect (Outbox.reconcile)."""

from __future__ import annotations

import pytest

from syncbridge.client.errors import ConflictError, QueueFull
from syncbridge.client.mirror import Change, Mirror
from syncbridge.client.outbox import MISSING, Outbox, PendingUpdate


def pending(
    key: str, value: object, *, base_version: int = 1, base: object = MISSING
) -> PendingUpdate:
    return PendingUpdate(key=key, value=value, operation="SET", base_version=1, base_value=base)


def test_outbox_is_bounded() -> None:
    outbox = Outbox(max_queued=2, max_in_flight=1)
    outbox.add(pending("a", 1))
    outbox.add(pending("b", 2))
    with pytest.raises(QueueFull):
        outbox.add(pending("c", 3))
    first = outbox.next_to_send()
    assert first is not None
    outbox.mark_sent(first, "u1")
    assert outbox.next_to_send() is None  # the in-flight window is full


def test_outbox_in_flight_update_shown_applied_is_acknowledged_not_resent() -> None:
    outbox = Outbox(max_queued=10, max_in_flight=10)
    update = pending("k", "mine")
    outbox.add(update)
    outbox.mark_sent(outbox.next_to_send() or update, "u1")
    outbox.connection_lost()
    mirror = Mirror(state={"k": "mine"}, version=2)
    replayed = [Change(key="k", value="mine", operation="SET", version=2, device_id="me")]
    assert outbox.reconcile(mirror, replayed, "me") == []
    assert update.version == 2
    assert len(outbox) == 0


def test_outbox_conflict_fails_the_update_and_later_ones_of_that_key() -> None:
    outbox = Outbox(max_queued=10, max_in_flight=10)
    first = pending("title", "mine", base="draft")
    second = pending("title", "mine, edited", base="draft")
    other = pending("free", 1, base=0)
    for update in (first, second, other):
        outbox.add(update)
    mirror = Mirror(state={"title": "theirs", "free": 0}, version=5)
    conflicts = outbox.reconcile(mirror, [], "me")
    assert [(c.key, c.server_value) for c in conflicts] == [("title", "theirs")] * 2
    assert isinstance(first.error, ConflictError)
    assert isinstance(second.error, ConflictError)
    assert list(outbox.queued) == [other]


def test_outbox_unchanged_key_is_sent_again() -> None:
    outbox = Outbox(max_queued=10, max_in_flight=10)
    update = pending("k", 2, base=1)
    outbox.add(update)
    outbox.mark_sent(outbox.next_to_send() or update, "u1")
    outbox.connection_lost()
    assert outbox.reconcile(Mirror(state={"k": 1}, version=1), [], "me") == []
    assert list(outbox.queued) == [update]
    assert update.maybe_applied
