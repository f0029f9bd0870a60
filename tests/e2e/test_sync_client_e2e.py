"""The reconnecting client against a real server (memory store): mirror, events, queue, tokens."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from syncbridge.client import (
    AuthFailed,
    Backoff,
    Change,
    ConflictError,
    ConnectionLost,
    QueueFull,
    Reconnected,
    Resynced,
    SyncClient,
    TokenRefreshed,
    open_client,
    open_sync_client,
)

from ..conftest import RunningServer, make_settings, mint, start_server
from ..process.proc import free_port

BOUND = 20
FAST = {"backoff": Backoff(initial=0.02, max_delay=0.2), "heartbeat_interval": None}


async def server_state(server: RunningServer, session: str = "s1") -> tuple[dict[str, Any], int]:
    """The session's state and version, as another device reads them over the wire."""
    token = server.token(device="probe", session=session)
    async with open_client(server.url, token=token, heartbeat_interval=None) as probe:
        snapshot = await probe.snapshot()
    return snapshot["state_data"], snapshot["version"]


def mirrors(client: SyncClient, state: dict[str, Any], version: int) -> bool:
    return dict(client.state) == state and client.version == version


async def test_sync_client_mirror_follows_every_push(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_client(server.url, token=server.token(device="other")) as other:
            await other.update("before", 1)
            async with open_sync_client(server.url, token=server.token(), **FAST) as client:
                assert dict(client.state) == {"before": 1}
                assert client.version == 1
                await other.update("theme", "dark")
                await other.delete("before")
                await client.wait_until(lambda _s, v: v == 3)
                assert dict(client.state) == {"theme": "dark"}
                assert await client.set("mine", [1, 2]) == 4
                assert mirrors(client, *await server_state(server))
                events = []
                async for event in client.events():
                    events.append(event)
                    if isinstance(event, Change) and event.version == 4:
                        break
            kinds = [(type(e).__name__, getattr(e, "version", None)) for e in events]
            assert kinds == [("Change", 1), ("Change", 2), ("Change", 3), ("Change", 4)]
            assert events[-1].local is True
            assert events[1].device_id == "other"


async def test_sync_client_base_version_is_harmless_before_the_server_checks_it(
    server: RunningServer,
) -> None:
    # Today's server ignores base_version (v1 leniency); the option is ready for
    # the server that will refuse a stale one.
    with trio.fail_after(BOUND):
        async with open_sync_client(
            server.url, token=server.token(), send_base_version=True, **FAST
        ) as client:
            assert await client.set("k", 1) == 1
            assert await client.set("k", 2) == 2
            assert mirrors(client, *await server_state(server))


async def test_sync_client_bad_token_without_provider_raises_auth_failed(
    server: RunningServer,
) -> None:
    with trio.fail_after(BOUND), pytest.raises(AuthFailed):
        async with open_sync_client(server.url, token=mint(secret="w" * 40), **FAST):
            raise AssertionError("not synced")


async def test_sync_client_token_provider_replaces_a_refused_token(server: RunningServer) -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return server.token()

    with trio.fail_after(BOUND):
        async with open_sync_client(
            server.url, token=mint(secret="w" * 40), token_provider=provider, **FAST
        ) as client:
            assert client.connected
            assert calls == 1


async def test_sync_client_survives_server_restart_and_resyncs(nursery: trio.Nursery) -> None:
    # The memory store loses everything on restart: the client must take the
    # new (empty) snapshot, with its lower version, and say so.
    settings = make_settings(addr=f"127.0.0.1:{free_port()}")
    crashable = await start_crashable(nursery, settings)
    first = crashable.server
    with trio.fail_after(BOUND):
        async with open_sync_client(first.url, token=first.token(), **FAST) as client:
            await client.set("a", 1)
            await client.set("b", 2)
            await crashable.crash()
            lost = [e async for e in _until(client, ConnectionLost)]
            assert isinstance(lost[-1], ConnectionLost)
            crashable = await start_crashable(nursery, settings)
            second = crashable.server
            events = [e async for e in _until(client, Reconnected)]
            resynced = [e for e in events if isinstance(e, Resynced)]
            assert resynced[0].reason == "snapshot"
            assert resynced[0].state == {}
            assert mirrors(client, {}, 0)
            assert await client.set("c", 3) == 1
            assert mirrors(client, *await server_state(second))
            await crashable.crash()


async def test_sync_client_updates_while_disconnected_are_sent_after_resume(
    nursery: trio.Nursery,
) -> None:
    settings = make_settings(addr=f"127.0.0.1:{free_port()}")
    crashable = await start_crashable(nursery, settings)
    first = crashable.server
    with trio.fail_after(BOUND):
        async with open_sync_client(first.url, token=first.token(), max_queued=3, **FAST) as c:
            await crashable.crash()
            async for _ in _until(c, ConnectionLost):
                pass
            queued = [c.submit(f"k{i}", i) for i in range(3)]
            with pytest.raises(QueueFull):
                c.submit("k3", 3)
            assert not any(u.acknowledged for u in queued)
            crashable = await start_crashable(nursery, settings)
            second = crashable.server
            versions = [await u.wait() for u in queued]
            assert versions == [1, 2, 3]
            assert mirrors(c, *await server_state(second))
            await crashable.crash()


async def test_sync_client_conflicting_offline_update_is_not_sent(
    nursery: trio.Nursery, redis_server: Any
) -> None:
    from ..e2e_redis import redis_settings

    settings = redis_settings(redis_server.url, addr=f"127.0.0.1:{free_port()}")
    crashable = await start_crashable(nursery, settings)
    first = crashable.server
    # Another process of the same service, where another device stays connected.
    other_process = await start_crashable(nursery, redis_settings(redis_server.url))
    elsewhere = other_process.server
    with trio.fail_after(BOUND):
        async with open_sync_client(first.url, token=first.token(), **FAST) as client:
            await client.set("title", "draft")
            await client.set("free", 0)
            await crashable.crash()
            async for _ in _until(client, ConnectionLost):
                pass
            # Offline, this device edits two keys; another device changes one of them.
            title = client.submit("title", "mine")
            free = client.submit("free", 1)
            async with open_client(elsewhere.url, token=elsewhere.token(device="d2")) as other:
                await other.update("title", "theirs")
            crashable = await start_crashable(nursery, settings)
            second = crashable.server
            with pytest.raises(ConflictError) as conflict:
                await title.wait()
            assert conflict.value.server_value == "theirs"
            assert await free.wait() == 4
            assert dict(client.state) == {"title": "theirs", "free": 1}
            assert mirrors(client, *await server_state(second))
            await crashable.crash()
            await other_process.crash()


@attrs.define
class Crashable:
    """A server the test crashes: its sockets vanish without a close frame."""

    server: RunningServer
    scope: trio.CancelScope
    gone: trio.Event

    async def crash(self) -> None:
        """Cancel the server and wait until it has let go of its port."""
        self.scope.cancel()
        await self.gone.wait()


async def start_crashable(nursery: trio.Nursery, settings: Any) -> Crashable:
    """Start a server that ``crash()`` stops without draining.

    (A graceful stop with clients attached can trip hypercorn into a
    BusyResourceError that ends the whole server: reported to the transport rewrite.)
    """

    async def run(task_status: trio.TaskStatus[Crashable]) -> None:
        gone = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    server = await start_server(inner, settings)
                    task_status.started(Crashable(server, scope, gone))
                    await trio.sleep_forever()
        finally:
            gone.set()

    result: Crashable = await nursery.start(run)
    return result


async def _until(client: SyncClient, kind: type) -> Any:
    async for event in client.events():
        yield event
        if isinstance(event, kind):
            return


async def test_sync_client_refreshes_its_token_before_expiry(nursery: trio.Nursery) -> None:
    # Each AuthSuccess authorises the socket for TOKEN_TTL (3 s here): without a
    # refresh the server closes it 4401 then.
    server = await start_server(nursery, make_settings(token_ttl=3.0))
    with trio.fail_after(BOUND):
        async with open_sync_client(server.url, token=server.token(), **FAST) as client:
            first_token = client.token
            refreshed = 0
            async for event in client.events():
                assert not isinstance(event, ConnectionLost), event
                if isinstance(event, TokenRefreshed):
                    refreshed += 1
                    assert 0 < event.expires_in <= 3.0
                    if refreshed == 3:  # past the first token's lifetime (3 s)
                        break
            assert client.reconnects == 0
            assert client.token != first_token
            assert await client.set("still", "here") == 1
    server.stop.set()


async def test_sync_client_expired_token_is_replaced_by_the_provider(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(nursery, make_settings(token_ttl=1.0))
    provided = 0

    async def provider() -> str:
        nonlocal provided
        provided += 1
        return server.token()

    with trio.fail_after(BOUND):
        async with open_sync_client(
            server.url, token_provider=provider, refresh_tokens=False, **FAST
        ) as client:
            await client.set("a", 1)
            events = [e async for e in _until(client, Reconnected)]
            lost = [e for e in events if isinstance(e, ConnectionLost)]
            assert [e.code for e in lost] == [4401]
            assert provided == 2
            assert await client.set("b", 2) == 2
            assert mirrors(client, {"a": 1, "b": 2}, 2)
    server.stop.set()
