"""The Redis client (coredis), key layout and error translation for the Redis backend.

coredis runs on anyio, so under trio it gets trio's real cancellation. Every
Redis failure is turned into :class:`StoreUnavailable` here, in one place; no
coredis exception travels further.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, TypeVar

import anyio
import attrs
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from syncbridge.errors import StoreUnavailable
from syncbridge.settings import Settings

__all__ = [
    "STORE_FAILURES",
    "Keys",
    "RedisClient",
    "call",
    "connect",
    "describe_target",
    "translate_errors",
]

log = logging.getLogger(__name__)

RedisClient = coredis.Redis[bytes] | coredis.RedisCluster[bytes]
T = TypeVar("T")

# Failures that mean "Redis could not do it": the network, the server refusing
# (OOM, READONLY, cluster down), or no answer in time. Our own bugs (TypeError
# and friends) are deliberately not in this list.
STORE_FAILURES: Final = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def _escape(session_id: str) -> str:
    # A hash tag ends at the first "}", so braces inside a session id would put
    # the session's keys on different cluster slots; escape them.
    return session_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@attrs.frozen
class Keys:
    """The Redis keys of one session; all share the hash tag ``{<session id>}``."""

    session_id: str

    @property
    def tag(self) -> str:
        return "{" + _escape(self.session_id) + "}"

    @property
    def state(self) -> str:
        """Hash: state key -> JSON value (``HGETALL session:{id}`` shows the state)."""
        return f"session:{self.tag}"

    @property
    def meta(self) -> str:
        """Hash: version, created_at, updated_at, bytes."""
        return f"session:{self.tag}:meta"

    @property
    def history(self) -> str:
        """List of the last HISTORY_SIZE changes as JSON, oldest first."""
        return f"session:{self.tag}:history"

    @property
    def snapshots(self) -> str:
        """Hash: restore point id -> its description JSON (HTTP API snapshots)."""
        return f"session:{self.tag}:snapshots"

    @property
    def snapshot_states(self) -> str:
        """Hash: restore point id -> the state it holds, as one JSON object."""
        return f"session:{self.tag}:snapshot_states"

    @property
    def snapshot_ids(self) -> str:
        """List of restore point ids, newest first (bounded)."""
        return f"session:{self.tag}:snapshot_ids"

    def revoked_device(self, device_id: str) -> str:
        """String: the Unix second before which the device's tokens are refused."""
        return f"session:{self.tag}:revoked:{device_id}"

    @property
    def versioned(self) -> list[str]:
        """The keys that live and expire with the session's state (script KEYS order)."""
        return [
            self.state,
            self.meta,
            self.history,
            self.snapshots,
            self.snapshot_states,
            self.snapshot_ids,
        ]

    @property
    def presence(self) -> str:
        """Sorted set of online connections, scored by expiry (ms)."""
        return f"session:{self.tag}:presence"

    @property
    def devices(self) -> str:
        """Hash: device id -> device description JSON."""
        return f"session:{self.tag}:devices"

    @property
    def channel(self) -> str:
        """Pub/sub channel of the session's events."""
        return f"session:{self.tag}:events"


def describe_target(settings: Settings) -> str:
    """Where Redis is, for logs (never the password)."""
    return settings.redis_target


def connect(settings: Settings) -> RedisClient:
    """A client for the configured Redis (not yet connected; use ``async with``)."""
    common: dict[str, Any] = {
        "decode_responses": False,
        "connect_timeout": settings.store_timeout,
        "stream_timeout": settings.store_timeout,
        # No automatic retries: a timed-out script may have run, and running it
        # again would apply one update twice. Clients retry, by version.
        "retry_policy": NoRetryPolicy(),
    }
    if settings.redis_username:
        common["username"] = settings.redis_username
    if settings.redis_password:
        common["password"] = settings.redis_password
    if settings.redis_cluster:
        if settings.redis_url:
            return coredis.RedisCluster.from_url(
                settings.redis_url, decode_components=True, **common
            )
        host, _, port = settings.redis_addr.rpartition(":")
        return coredis.RedisCluster(host=host or "localhost", port=int(port), **common)
    if settings.redis_url:
        return coredis.Redis.from_url(
            settings.redis_url, db=settings.redis_db or None, decode_components=True, **common
        )
    host, _, port = settings.redis_addr.rpartition(":")
    return coredis.Redis(host=host or "localhost", port=int(port), db=settings.redis_db, **common)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn any Redis failure inside the block into StoreUnavailable."""
    try:
        yield
    except STORE_FAILURES as exc:
        raise StoreUnavailable(f"store unavailable: {what} failed ({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def call(what: str, timeout: float, operation: Callable[[], Awaitable[T]]) -> T:
    """Run one Redis operation under a deadline, translating every failure."""
    with translate_errors(what):
        try:
            with trio.fail_after(timeout):
                return await operation()
        except trio.TooSlowError:
            raise StoreUnavailable(
                f"store unavailable: {what} got no answer within {timeout:g}s"
            ) from None
