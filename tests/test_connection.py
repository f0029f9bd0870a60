"""Connection nursery: liveness, auth deadline, token expiry, task lifetimes and clean-up.

Driven over the fake transport (tests/fake_transport.py) with trio's MockClock (autojump): a 60 s
deadline runs instantly and lands exactly on time.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from .fake_transport import (
    EPOCH,
    authenticate,
    connect,
    delivered_at,
    make_app,
    publish_updates,
    pushes,
    session_of,
    start_connection,
    still_open_for,
    token,
)

# -- liveness ----------------------------------------------------------------------


async def test_liveness_silent_socket_closed_4001_after_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    link = await connect(nursery, app, "a")
    last_message = trio.current_time()
    assert await still_open_for(link, 59)
    with trio.fail_after(1.5):
        code = await link.ws.wait_closed()
    assert code == CloseCode.LIVENESS_TIMEOUT
    assert trio.current_time() - last_message == pytest.approx(60)
    with trio.fail_after(1):
        await link.done.wait()


async def test_liveness_heartbeats_every_30s_keep_socket_open(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    link = await connect(nursery, app, "a")
    for n in range(10):  # five minutes
        assert await still_open_for(link, 30)
        link.ws.push(MessageType.HEARTBEAT, {"client_time": n})
        ack = await link.ws.wait_for(MessageType.HEARTBEAT_ACK)
        assert ack["payload"]["client_time"] == n
    assert trio.current_time() >= 300
    last_heartbeat = trio.current_time()
    with trio.fail_after(61):
        assert await link.ws.wait_closed() == CloseCode.LIVENESS_TIMEOUT
    assert trio.current_time() - last_heartbeat == pytest.approx(60)


async def test_heartbeat_first_ping_one_interval_after_accept_then_every_interval(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(ping_interval=30, liveness_timeout=60)
    link = await connect(nursery, app, "a")
    opened = trio.current_time()
    assert link.ws.pings == []  # never a ping at accept
    assert await still_open_for(link, 29.9)
    assert link.ws.pings == []
    link.ws.answers_pings = True
    assert await still_open_for(link, 100)
    assert [t - opened for t in link.ws.pings] == [pytest.approx(30 * n) for n in (1, 2, 3, 4)]


async def test_liveness_pongs_keep_a_socket_that_sends_nothing_open(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(ping_interval=20, liveness_timeout=60)
    link = await connect(nursery, app, "a")
    link.ws.answers_pings = True  # any frame is a sign of life, pongs included
    assert await still_open_for(link, 600)
    link.ws.answers_pings = False  # now it goes silent for real
    silent_from = link.ws.last_activity
    with trio.fail_after(61):
        assert await link.ws.wait_closed() == CloseCode.LIVENESS_TIMEOUT
    assert trio.current_time() - silent_from == pytest.approx(60)


# -- authentication deadline ---------------------------------------------------------


async def test_auth_timeout_unauthenticated_socket_closed_4408(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    link = await start_connection(nursery, app)
    # Heartbeats are allowed before auth but do not postpone the auth deadline.
    for _ in range(2):
        assert await still_open_for(link, 10)
        link.ws.push(MessageType.HEARTBEAT, {})
        await link.ws.wait_for(MessageType.HEARTBEAT_ACK)
    assert await still_open_for(link, 9.9)
    with trio.fail_after(0.2):
        assert await link.ws.wait_closed() == CloseCode.AUTH_TIMEOUT
    assert trio.current_time() == pytest.approx(30)
    with trio.fail_after(1):
        await link.done.wait()  # the watchdog's close ended the blocked reader too
    assert [c["code"] for c in link.ws.close_calls()] == [CloseCode.AUTH_TIMEOUT]


async def test_auth_timeout_authenticated_before_deadline_stays_open(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    link = await start_connection(nursery, app)
    assert await still_open_for(link, 29)
    await authenticate(link, token("a"))
    assert await still_open_for(link, 59.9)  # well past the 30 s auth deadline
    with trio.fail_after(0.2):
        assert await link.ws.wait_closed() == CloseCode.LIVENESS_TIMEOUT


# -- token expiry ----------------------------------------------------------------------


async def test_token_expiry_closes_4401_when_token_expires(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(token_ttl=45)  # the socket is authorised until AuthSuccess expires_at
    link = await connect(nursery, app, "a")
    assert await still_open_for(link, 44.9)
    with trio.fail_after(0.2):
        assert await link.ws.wait_closed() == CloseCode.TOKEN_EXPIRED
    assert trio.current_time() == pytest.approx(45)
    assert link.ws.close_event is not None
    assert "expired" in link.ws.close_event["reason"]


async def test_token_expiry_reauth_with_fresh_token_moves_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(token_ttl=45)
    link = await connect(nursery, app, "a")
    assert await still_open_for(link, 30)
    refreshed = await authenticate(link, token("a"))
    assert refreshed["expires_at"] == EPOCH + 75
    assert await still_open_for(link, 44.9)
    with trio.fail_after(0.2):
        assert await link.ws.wait_closed() == CloseCode.TOKEN_EXPIRED
    assert trio.current_time() == pytest.approx(75)


async def test_token_expiry_refused_reauth_keeps_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(token_ttl=45)
    link = await connect(nursery, app, "a")
    assert await still_open_for(link, 30)
    link.ws.push(MessageType.AUTH, {"token": token("a") + "x"})  # bad signature
    failure = await link.ws.wait_for(MessageType.AUTH_FAILURE)
    assert failure["payload"]["code"] == 401
    with trio.fail_after(15.1):
        assert await link.ws.wait_closed() == CloseCode.TOKEN_EXPIRED
    assert trio.current_time() == pytest.approx(45)


# -- one nursery: any task ending ends the others ------------------------------------------


async def test_connection_peer_disconnect_ends_tasks_without_close_frame(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    link = await connect(nursery, app, "a")
    link.ws.push_disconnect(1001)
    with trio.fail_after(0.1):
        await link.done.wait()  # writer and watchdog were cancelled with the reader
    assert link.connection.peer_close_code == 1001
    assert link.connection.close_code is None
    assert link.ws.close_calls() == []
    assert link.error == []


async def test_connection_close_sends_first_close_code_and_reason(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    link = await connect(nursery, app, "a")
    link.connection.close(CloseCode.GOING_AWAY, "server restarting")
    link.connection.close(CloseCode.NORMAL, "too late")
    with trio.fail_after(0.1):
        await link.done.wait()
    assert link.ws.close_calls() == [
        {"type": "websocket.close", "code": 1001, "reason": "server restarting"}
    ]


async def test_connection_close_reason_truncated_to_control_frame_limit(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    link = await start_connection(nursery, app)
    link.connection.close(CloseCode.NORMAL, "é" * 100)  # 200 bytes of UTF-8
    with trio.fail_after(0.1):
        await link.done.wait()
    (close,) = link.ws.close_calls()
    assert len(close["reason"].encode()) <= 123
    assert close["reason"] == "é" * 61


async def test_connection_internal_error_closes_1011_and_cleans_up(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    broken = await connect(nursery, app, "a")
    other = await connect(nursery, app, "b")
    await trio.testing.wait_all_tasks_blocked()
    broken.ws.pending()
    handle = app.service.handle

    async def handle_or_fail(peer: Any, envelope: Any) -> None:
        if peer is broken.connection:
            raise RuntimeError("a bug of ours")
        await handle(peer, envelope)

    monkeypatch.setattr(app.service, "handle", handle_or_fail)
    broken.ws.push(MessageType.HEARTBEAT, {})  # the reader fails on it
    with trio.fail_after(1):
        assert await broken.ws.wait_closed() == CloseCode.INTERNAL_ERROR
        await broken.done.wait()
    assert broken.error == []  # contained: the connection ended, nothing else
    left = await other.ws.wait_for(MessageType.DEVICE_LEFT)
    assert left["payload"]["device_id"] == "a"
    assert [box.label for box in app.hub.outboxes("s1")] == [other.connection.outbox.label]
    device = app.presence.presence.device("s1", "a")
    assert device is not None
    assert not device.is_online
    assert not other.ws.is_closed


async def test_connection_broken_socket_ends_connection_as_1006_and_cleans_up(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    broken = await connect(nursery, app, "a")
    other = await connect(nursery, app, "b")
    await trio.testing.wait_all_tasks_blocked()
    broken.ws.pending()
    broken.ws.fail_sends(ConnectionResetError("peer reset"))
    other.ws.push(MessageType.STATE_UPDATE, {"key": "k", "value": 1})  # fanned out to a
    with trio.fail_after(1):
        await broken.done.wait()
    assert broken.error == []
    assert broken.connection.peer_close_code == 1006  # the peer went away; not our error
    assert broken.connection.close_code is None
    assert broken.ws.close_calls() == []
    left = await other.ws.wait_for(MessageType.DEVICE_LEFT)
    assert left["payload"]["device_id"] == "a"
    assert app.hub.subscriber_count == 1
    assert broken.ws.released


# -- clean-up -----------------------------------------------------------------------------


async def test_connection_cleanup_device_left_only_when_last_tab_closes(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app()
    tab1 = await connect(nursery, app, "a")
    tab2 = await connect(nursery, app, "a")
    other = await connect(nursery, app, "b")
    await trio.testing.wait_all_tasks_blocked()
    for link in (tab1, tab2, other):
        link.ws.pending()

    tab1.ws.push_disconnect(1000)
    await tab1.done.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert other.ws.pending() == []  # device a is still online through tab2
    assert app.hub.subscriber_count == 2

    tab2.connection.close(CloseCode.LIVENESS_TIMEOUT, "gone quiet")
    await tab2.done.wait()
    left = await other.ws.wait_for(MessageType.DEVICE_LEFT)
    assert left["payload"]["device_id"] == "a"
    assert left["device_id"] == "a"
    assert app.presence.session_count == 1

    other.ws.push_disconnect(1000)
    await other.done.wait()
    assert app.hub.session_count == 0
    assert app.hub.subscriber_count == 0
    assert app.presence.session_count == 0
    assert app.service.locks._locks == {}
    assert app.connections == {}


async def test_connection_cleanup_bounded_when_close_frame_cannot_be_sent(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(cleanup_timeout=2.0)
    stuck = await connect(nursery, app, "a")
    other = await connect(nursery, app, "b")
    await trio.testing.wait_all_tasks_blocked()
    stuck.ws.stall()
    start = trio.current_time()
    stuck.connection.close(CloseCode.GOING_AWAY, "bye")
    with trio.fail_after(2.1):
        await stuck.done.wait()
    assert trio.current_time() - start == pytest.approx(2.0)
    assert [c["code"] for c in stuck.ws.close_calls()] == [1001]  # tried, never completed
    assert not stuck.ws.is_closed
    left = await other.ws.wait_for(MessageType.DEVICE_LEFT)
    assert left["payload"]["device_id"] == "a"
    assert delivered_at(other, MessageType.DEVICE_LEFT) == [start]  # left at once
    assert app.hub.subscriber_count == 1


# -- backpressure seen from the connection ----------------------------------------------------

OUTBOX = 4
FILLING = OUTBOX + 1  # four frames queue in the outbox of a stalled device: the fifth waits


async def test_backpressure_receiver_gone_mid_fanout_releases_publisher(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(outbox_size=OUTBOX, slow_consumer_timeout=5)
    pub, fast, leaving = await session_of(nursery, app, "p", "f", "s")
    leaving.ws.stall()
    start = trio.current_time()
    publish_updates(pub, FILLING + 3)
    assert await still_open_for(leaving, 1)
    leaving.ws.push_disconnect(1006)  # TCP lost while the publisher waits for its outbox
    with trio.fail_after(0.1):
        await pub.ws.wait_for(MessageType.HEARTBEAT_ACK)
        await leaving.done.wait()
    assert delivered_at(pub, MessageType.HEARTBEAT_ACK) == [pytest.approx(start + 1)]
    assert [v for _, v, _ in pushes(fast)] == list(range(FILLING + 3))
    assert leaving.connection.close_code is None  # not a slow consumer: it left
    assert leaving.ws.close_calls() == []
    assert app.hub.slow_consumers_closed == 0
    assert pub.error == leaving.error == []


async def test_backpressure_own_replies_fill_outbox_closes_4000(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(outbox_size=OUTBOX, slow_consumer_timeout=5)
    other, stalled = await session_of(nursery, app, "o", "s")
    stalled.ws.stall()
    start = trio.current_time()
    for _ in range(FILLING + 4):  # a device that sends but never reads its answers
        stalled.ws.push(MessageType.HEARTBEAT, {})
    left = await other.ws.wait_for(MessageType.DEVICE_LEFT)
    assert left["payload"]["device_id"] == "s"
    assert delivered_at(other, MessageType.DEVICE_LEFT) == [pytest.approx(start + 5)]
    assert stalled.connection.close_code == CloseCode.SLOW_CONSUMER
    assert app.hub.slow_consumers_closed == 1


async def test_backpressure_messages_never_reordered_for_a_receiver(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(outbox_size=2, slow_consumer_timeout=5)
    p1, p2, slow, fast = await session_of(nursery, app, "p1", "p2", "r", "f")
    slow.ws.stall()
    for i in range(8):  # interleaved arrival from two publishers
        p1.ws.push(MessageType.STATE_UPDATE, {"key": "k1", "value": f"p1-{i}"})
        p2.ws.push(MessageType.STATE_UPDATE, {"key": "k2", "value": f"p2-{i}"})
    assert await still_open_for(slow, 1)
    slow.ws.release_reader()
    with trio.fail_after(1):
        for _ in range(16):
            await slow.ws.wait_for(MessageType.STATE_UPDATE)
    seen = [(v, version) for _, v, version in pushes(slow)]
    assert [version for _, version in seen] == list(range(1, 17))
    assert [v for v, _ in seen if v.startswith("p1")] == [f"p1-{i}" for i in range(8)]
    assert [v for v, _ in seen if v.startswith("p2")] == [f"p2-{i}" for i in range(8)]
    assert [(v, version) for _, v, version in pushes(fast)] == seen
    assert app.hub.slow_consumers_closed == 0


# -- rate limits: flooding window, shared per device, outbox bytes -------------------------


async def test_flooding_closes_4429_on_refusals_within_the_window_despite_refills(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # 10 messages/s with a burst of 20: a client sending 11 every 0.1 s gets one
    # through per refill, so it never makes 20 refusals "in a row" (the old rule),
    # yet it is refused ~90 % of the time: 20 refusals within FLOOD_WINDOW close it.
    app = make_app(rate_limit=10, rate_burst=20, flood_window=10)
    link = await connect(nursery, app, "a")
    link.ws.pending()
    for _ in range(20):  # use up the burst
        link.ws.push(MessageType.HEARTBEAT, {})
    await trio.testing.wait_all_tasks_blocked()
    link.ws.pending()
    ticks = 0
    while not link.ws.is_closed:
        ticks += 1
        for _ in range(11):
            link.ws.push(MessageType.HEARTBEAT, {})
        with trio.move_on_after(0.1):
            await link.ws.wait_closed()
    assert link.connection.close_code == CloseCode.FLOODING
    assert ticks <= 3
    metrics = app.metrics.render().decode()
    assert 'syncbridge_refusals_total{reason="flooding"} 1.0' in metrics
    assert 'syncbridge_refusals_total{reason="rate_limited"}' in metrics


async def test_rate_limit_follows_the_device_across_its_sockets(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(rate_limit=1, rate_burst=10, flood_window=1000)
    tabs = [await connect(nursery, app, "a") for _ in range(4)]
    await trio.testing.wait_all_tasks_blocked()
    for tab in tabs:
        tab.ws.pending()
    for tab in tabs:  # 4 sockets x 10 messages at the same instant
        for _ in range(10):
            tab.ws.push(MessageType.HEARTBEAT, {})
    await trio.testing.wait_all_tasks_blocked()
    replies = [m for tab in tabs for m in tab.ws.pending()]
    acks = [m for m in replies if m["type"] == MessageType.HEARTBEAT_ACK]
    refused = [m for m in replies if m["type"] == MessageType.ERROR]
    assert len(acks) == 10  # one device, one burst: not 4 x 10
    assert len(refused) == 30
    assert {m["payload"]["error_code"] for m in refused} == {"RATE_LIMITED"}


async def test_outbox_bounded_in_bytes_closes_slow_consumer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    app = make_app(outbox_size=1000, outbox_bytes=2_000, slow_consumer_timeout=5)
    pub, stalled = await session_of(nursery, app, "p", "s")
    stalled.ws.stall()
    for i in range(6):  # ~600-byte frames: the fourth no longer fits 2 000 bytes
        pub.ws.push(MessageType.STATE_UPDATE, {"key": "k", "value": f"{i}" * 500})
    depth = 0
    with trio.fail_after(5.1):
        while not stalled.ws.close_calls():
            depth = max(depth, stalled.connection.outbox.depth)
            await stalled.ws.wait_room()
    assert stalled.connection.close_code == CloseCode.SLOW_CONSUMER
    assert depth == 3  # 3 x ~600 bytes queued; the fourth waited, then the close
