"""PeerRegistry: close orders and deliveries for this process's authenticated connections."""

from __future__ import annotations

import attrs
import trio

from syncbridge.auth import Claims
from syncbridge.control import CloseOrder, Delivery, PeerRegistry
from syncbridge.errors import CloseCode


@attrs.define
class FakeOutbox:
    room: bool = True
    frames: list[str] = attrs.field(factory=list)
    slow: bool = False
    label: str = "fake"
    depth: int = 0

    def offer(self, frame: str) -> bool:
        if self.room:
            self.frames.append(frame)
        return self.room

    async def wait_send(self, frame: str) -> None:
        self.frames.append(frame)

    def close_slow(self) -> None:
        self.slow = True


@attrs.define
class FakePeer:
    key: int
    claims: Claims | None
    outbox: FakeOutbox = attrs.field(factory=FakeOutbox)
    closed: CloseCode | None = None

    def close(self, code: CloseCode, reason: str) -> None:
        self.closed = code


def claims(device: str = "d1", *, jti: str = "j1", iat: int = 100) -> Claims:
    return Claims(
        user_id="u1",
        device_id=device,
        session_id="s1",
        expires_at=10_000,
        issued_at=iat,
        token_id=jti,
    )


async def test_close_order_closes_only_matching_peers() -> None:
    registry = PeerRegistry()
    a, b, c = FakePeer(1, claims("a")), FakePeer(2, claims("b", jti="j2")), FakePeer(3, None)
    for peer in (a, b, c):
        registry.add(peer)
    order = CloseOrder(code=CloseCode.DEVICE_REMOVED, reason="x", session_id="s1", device_id="a")
    registry.handle(order.encode())
    assert (a.closed, b.closed, c.closed) == (CloseCode.DEVICE_REMOVED, None, None)
    registry.handle(b"not json")  # ignored, logged
    registry.handle(b'{"kind": "close"}')
    assert b.closed is None


async def test_recent_revocation_closes_a_late_registration_only_for_old_tokens() -> None:
    registry = PeerRegistry()
    revoke = CloseOrder(
        code=CloseCode.TOKEN_REVOKED, reason="r", session_id="s1", device_id="d1", issued_before=100
    )
    registry.handle(revoke.encode())
    late, fresh = FakePeer(1, claims(iat=100)), FakePeer(2, claims(iat=101))
    registry.add(late)
    registry.add(fresh)
    assert (late.closed, fresh.closed) == (CloseCode.TOKEN_REVOKED, None)
    # A kick without revocation is not remembered: the device may come back.
    registry.handle(CloseOrder(code=CloseCode.DEVICE_REMOVED, reason="k", device_id="d2").encode())
    back = FakePeer(3, claims("d2"))
    registry.add(back)
    assert back.closed is None


async def test_delivery_reaches_the_device_and_closes_a_full_outbox() -> None:
    registry = PeerRegistry()
    target, full, other = (
        FakePeer(1, claims("src")),
        FakePeer(2, claims("src"), FakeOutbox(room=False)),
        FakePeer(3, claims("other")),
    )
    for peer in (target, full, other):
        registry.add(peer)
    registry.handle(Delivery(session_id="s1", device_id="src", frame="F").encode())
    await trio.lowlevel.checkpoint()
    assert target.outbox.frames == ["F"]
    assert full.outbox.slow
    assert other.outbox.frames == []
