"""A client that keeps one session in sync through disconnects, restarts and token expiry.

::

    async with open_sync_client(url, token=token, token_provider=fetch_token) as client:
        print(client.state, client.version)      # equal to the server's snapshot
        version = await client.set("theme", "dark")   # returns once acknowledged
        async for event in client.events():
            ...                                  # Change, Resynced, ConnectionLost, ...

Task tree (``open_sync_client``'s nursery)::

    _run                     connect, resume, serve the link; back off and repeat
    └── per connection: Link.serve -> _pump (the only reader), _send_loop, _refresh_loop

What one connection does is in link.py; the state that outlives connections
(mirror, outbox, events, tokens) is the :class:`SyncCore`.
"""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from syncbridge.client.backoff import Backoff
from syncbridge.client.connection import Client, open_client
from syncbridge.client.errors import (
    AuthFailed,
    ConnectFailed,
    Disconnected,
    ServerError,
    SyncClosed,
)
from syncbridge.client.link import Ended, Link, SyncCore
from syncbridge.client.mirror import (
    ConnectionLost,
    Event,
    Mirror,
    Reconnected,
)
from syncbridge.client.outbox import MISSING, Outbox, PendingUpdate
from syncbridge.client.sync_events import EventBuffer
from syncbridge.client.tokens import TokenKeeper, TokenProvider

__all__ = ["SyncClient", "open_sync_client"]

log = logging.getLogger(__name__)


# Upgrade refusals that no retry can fix (wrong path, origin not allowed).
_FATAL_HTTP: Final = frozenset({400, 401, 403, 404, 405, 426})


class SyncClient:
    """A session's state mirrored locally and kept equal to the server's.

    Use :func:`open_sync_client`. ``state`` (read-only) and ``version`` change
    only as the server's accepted changes arrive, in version order.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        token: str | None,
        token_provider: TokenProvider | None,
        device_type: str | None = None,
        device_name: str | None = None,
        backoff: Backoff | None = None,
        max_queued: int = 1000,
        max_in_flight: int = 32,
        max_events: int = 1000,
        wait_for_events: bool = False,
        heartbeat_interval: float | None = 30.0,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        refresh_margin: float = 60.0,
        refresh_tokens: bool = True,
        max_backlog: int = 10_000,
        send_base_version: bool = False,
    ) -> None:
        mirror = Mirror()
        self._core = SyncCore(
            mirror=mirror,
            outbox=Outbox(max_queued=max_queued, max_in_flight=max_in_flight),
            events=EventBuffer(mirror, max_events=max_events, wait=wait_for_events),
            tokens=TokenKeeper(token, token_provider, refresh_margin=refresh_margin),
            device={"device_type": device_type, "device_name": device_name},
            request_timeout=request_timeout,
            send_base_version=send_base_version,
            refresh_tokens=refresh_tokens,
        )
        # Short names for what this class uses most.
        self._mirror = mirror
        self._outbox = self._core.outbox
        self._events = self._core.events
        self._tokens = self._core.tokens
        self._max_backlog = max_backlog
        self._urls = list(urls)
        self._url_index = 0
        self._backoff = backoff or Backoff()
        self._heartbeat_interval = heartbeat_interval
        self._connect_timeout = connect_timeout
        self._connection: Client | None = None
        self._connected_event = trio.Event()
        self._synced_once = trio.Event()
        self._closed = False
        self.failure: BaseException | None = None
        self.url: str | None = None
        self.reconnects = 0

    # -- what the application reads -----------------------------------------------

    @property
    def state(self) -> Mapping[str, Any]:
        """The session's state as of :attr:`version` (a read-only view)."""
        return types.MappingProxyType(self._mirror.state)

    @property
    def version(self) -> int:
        """The version of :attr:`state`: the last change applied."""
        return self._mirror.version

    @property
    def identity(self) -> dict[str, Any]:
        """``user_id``, ``device_id`` and ``session_id`` from the last AuthSuccess."""
        return dict(self._core.identity)

    @property
    def refreshes(self) -> int:
        """How often the token was refreshed on a live connection."""
        return self._core.refreshes

    @property
    def connected(self) -> bool:
        """Whether a connection is up and resumed."""
        return self._connection is not None

    @property
    def token(self) -> str | None:
        """The latest token (each AuthSuccess's ``new_token`` replaces it)."""
        return self._tokens.token

    def events(self) -> AsyncIterator[Event]:
        """Every Change, Resynced, Conflict, ConnectionLost and Reconnected, in order.

        Ends when the client is closed; raises the error that stopped it.
        """
        return self._events.iterate(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def wait_until(
        self, predicate: Callable[[Mapping[str, Any], int], bool], *, timeout: float = 30.0
    ) -> None:
        """Wait until ``predicate(state, version)`` holds (checked after every change)."""
        with trio.fail_after(timeout):
            while not predicate(self.state, self.version):
                self._raise_if_failed()
                await self._events.changed()

    async def wait_connected(self, *, timeout: float = 30.0) -> None:
        """Wait until a connection is up and resumed."""
        with trio.fail_after(timeout):
            while self._connection is None:
                self._raise_if_failed()
                await self._connected_event.wait()

    # -- what the application writes ----------------------------------------------

    def submit(self, key: str, value: Any = None, *, operation: str = "SET") -> PendingUpdate:
        """Queue an update and return at once; ``await update.wait()`` for its version.

        Raises QueueFull when ``max_queued`` updates are unacknowledged.
        """
        self._raise_if_failed()
        if self._closed:
            raise SyncClosed("the client is closed")
        operation = operation.upper()
        update = PendingUpdate(
            key=key,
            value=None if operation == "DELETE" else value,
            operation=operation,
            base_version=self._mirror.version,
            base_value=self._mirror.state.get(key, MISSING),
        )
        self._outbox.add(update)
        self._core.pulse_outbox()
        return update

    async def set(self, key: str, value: Any) -> int:
        """Set ``key``; return the version once the server acknowledged it."""
        return await self.submit(key, value).wait()

    async def delete(self, key: str) -> int:
        """Delete ``key``; return the version once the server acknowledged it."""
        return await self.submit(key, operation="DELETE").wait()

    # -- the connection loop ------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                url = self._urls[self._url_index % len(self._urls)]
                try:
                    ended = await self._connect_once(url)
                except ConnectFailed as exc:
                    if exc.status_code in _FATAL_HTTP:
                        raise
                    ended = Ended(None, str(exc))
                    self._url_index += 1  # try the next address, if there are several
                except AuthFailed as exc:
                    # 503: the store could not record presence; 429: the session has
                    # too many devices online. Both pass; a refused token does not.
                    if exc.code not in (429, 503) and not self._tokens.refused():
                        raise
                    ended = Ended(None, f"auth refused: {exc}")
                except Disconnected as exc:
                    ended = Ended(exc.code, exc.reason)
                except trio.TooSlowError:
                    ended = Ended(None, "no answer in time")
                except ServerError as exc:
                    ended = Ended(None, str(exc))
                await self._lost(ended)
                if self._closed:
                    return
                if ended.code == 4401:  # token expired: a new one is needed first
                    self._tokens.stale = True
                delay = 0.0 if ended.code == 4408 else self._backoff.next_delay()
                log.info("reconnecting in %.2fs (%s %s)", delay, ended.code, ended.reason)
                await trio.sleep(delay)
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._fail(exc)
            raise

    async def _connect_once(self, url: str) -> Ended:
        async with open_client(
            url,
            heartbeat_interval=self._heartbeat_interval,
            connect_timeout=self._connect_timeout,
            max_pending=self._max_backlog,
        ) as connection:
            link = Link(self._core, connection)
            await link.resume()
            self.url = url
            self._connection = connection
            self._connected_event.set()
            self._backoff.reset()
            if self._synced_once.is_set():
                self.reconnects += 1
                await self._events.emit([Reconnected(version=self._mirror.version, url=url)])
            self._synced_once.set()
            return await link.serve()

    # -- bookkeeping ----------------------------------------------------------------

    async def _lost(self, ended: Ended) -> None:
        was_connected = self._connection is not None
        self._connection = None
        self._connected_event = trio.Event()
        self._outbox.connection_lost()
        if was_connected:
            await self._events.emit([ConnectionLost(code=ended.code, reason=ended.reason)])

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        self._outbox.fail_all(exc)
        self._connected_event.set()
        self._synced_once.set()
        self._events.close()

    def _raise_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _close(self) -> None:
        self._closed = True
        self._outbox.fail_all(SyncClosed("the client was closed before the server acknowledged"))
        self._events.close()


@asynccontextmanager
async def open_sync_client(
    url: str | Sequence[str],
    *,
    token: str | None = None,
    token_provider: TokenProvider | None = None,
    wait_synced: bool = True,
    **options: Any,
) -> AsyncIterator[SyncClient]:
    """Keep a session in sync until the block ends; see :class:`SyncClient` for ``options``.

    ``url`` may list several addresses of one service (tried in turn after a
    failure). With ``wait_synced`` (the default) the block starts once the first
    Resume has been applied, so ``state`` is the server's. Raises what stopped
    the client for good (a refused token without a provider, a refused upgrade)
    as the exception itself, never as an exception group.
    """
    urls = [url] if isinstance(url, str) else list(url)
    client = SyncClient(urls, token=token, token_provider=token_provider, **options)
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_quietly, client)
        try:
            if wait_synced:
                await client._synced_once.wait()
                client._raise_if_failed()
            yield client
        except Exception as exc:
            failure = exc
        finally:
            client._close()
            # Close the socket while its reader still runs, so the close
            # handshake completes instead of waiting out its timeout.
            connection = client._connection
            if connection is not None:
                with trio.move_on_after(2, shield=True):
                    await connection.aclose()
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _run_quietly(client: SyncClient) -> None:
    # The failure is recorded on the client (and raised to its users); letting it
    # out here would wrap it in the nursery's exception group.
    try:
        await client._run()
    except Exception:
        log.debug("sync client stopped", exc_info=True)
