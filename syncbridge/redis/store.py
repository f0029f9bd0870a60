"""RedisStore: durable, versioned session state; one script per update, pipelined."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
import trio

from syncbridge.errors import LimitExceeded, VersionConflict
from syncbridge.protocol.messages import Operation
from syncbridge.protocol.session import (
    DEFAULT_HISTORY_MAX_BYTES,
    Change,
    Commit,
    Edit,
    Snapshot,
    changes_from_record,
)
from syncbridge.redis import scripts
from syncbridge.redis.batch import ScriptBatcher
from syncbridge.redis.connection import Keys, RedisClient, call
from syncbridge.store.base import Origin, RestorePoint

__all__ = ["RedisStore"]


def _int(raw: Any) -> int | None:
    return int(raw) if raw is not None else None


def _text(raw: Any) -> str | None:
    return raw.decode() if raw else None


class RedisStore:
    """The Store protocol on Redis (or Redis Cluster).

    ``apply`` runs :data:`scripts.APPLY`: version bump, hash write, capped
    history, TTL refresh and publish happen atomically, so an acknowledged
    update is in Redis and on its way to every process.
    """

    name = "redis"
    publishes = True

    def __init__(
        self,
        client: RedisClient,
        *,
        header: Callable[[int | None, str | None], str],
        publish_command: str,
        session_ttl: float,
        history_size: int,
        max_state_bytes: int,
        max_keys: int,
        timeout: float,
        history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES,
        max_replay_bytes: int | None = None,
        target: str = "",
        batch: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target  # where Redis is, for /health (never the password)
        self._health_key = f"syncbridge:health:{secrets.token_hex(6)}"
        self._client = client
        self._header = header
        self._publish = publish_command
        self._ttl_ms = int(session_ttl * 1000)
        self._history_size = history_size
        self._history_max_bytes = history_max_bytes
        # A replay larger than a snapshot may be is answered with the snapshot.
        self._max_replay_bytes = max_state_bytes if max_replay_bytes is None else max_replay_bytes
        self._max_state_bytes = max_state_bytes
        self._max_keys = max_keys
        self._timeout = timeout
        self._clock = clock
        self._apply = client.register_script(scripts.APPLY)
        # Updates that arrive together are sent as one pipeline (redis/batch.py);
        # not on a cluster, where one pipeline would span shards.
        self._batcher = (
            ScriptBatcher(client, scripts.APPLY, what="update", timeout=timeout) if batch else None
        )
        self._apply_many = client.register_script(scripts.APPLY_MANY)
        self._save_point = client.register_script(scripts.SNAPSHOT_SAVE)
        self._list_points = client.register_script(scripts.SNAPSHOT_LIST)
        self._delete = client.register_script(scripts.DELETE_SESSION)
        self._claim = client.register_script(scripts.CLAIM_TICKET)
        self._snapshot = client.register_script(scripts.SNAPSHOT)
        self._changes = client.register_script(scripts.CHANGES)

    async def apply(
        self,
        session_id: str,
        key: str,
        value: Any,
        operation: Operation,
        origin: Origin | None = None,
        base_version: int | None = None,
    ) -> Change:
        """Apply one change in one round trip; raise LimitExceeded, VersionConflict
        or StoreUnavailable."""
        keys = Keys(session_id)
        now = int(self._clock())
        value_json = b"null" if operation is Operation.DELETE else orjson.dumps(value)
        tail_text = _tail(session_id, origin)
        apply_keys = keys.versioned
        apply_args = [
            key,
            operation.value,
            value_json,
            now,
            self._ttl_ms,
            self._history_size,
            self._max_state_bytes,
            self._max_keys,
            keys.channel,
            tail_text,
            self._header(origin.connection if origin else None, None),
            origin.user_id if origin else "",
            origin.device_id if origin else "",
            self._publish,
            self._history_max_bytes,
            "" if base_version is None else base_version,
        ]
        batcher = self._batcher
        reply: Any = await call(
            "update",
            self._timeout,
            (lambda: batcher.call(apply_keys, apply_args))
            if batcher is not None and batcher.running
            else (lambda: self._apply(keys=apply_keys, args=apply_args)),
        )
        self._check(reply, base_version)
        return Change(
            version=int(reply[1]),
            key=key,
            value=None if operation is Operation.DELETE else value,
            operation=operation,
            at=now,
            user_id=origin.user_id if origin else None,
            device_id=origin.device_id if origin else None,
        )

    async def apply_many(
        self,
        session_id: str,
        edits: tuple[Edit, ...],
        origin: Origin | None = None,
        base_version: int | None = None,
    ) -> Commit:
        """Apply several edits as one version in one script round trip."""
        if not edits:
            raise RuntimeError("apply_many needs at least one edit")
        keys = Keys(session_id)
        now = int(self._clock())
        args: list[Any] = [
            now,
            self._ttl_ms,
            self._history_size,
            self._max_state_bytes,
            self._max_keys,
            keys.channel,
            _tail(session_id, origin),
            self._header(origin.connection if origin else None, None),
            origin.user_id if origin else "",
            origin.device_id if origin else "",
            self._publish,
            self._history_max_bytes,
            "" if base_version is None else base_version,
        ]
        for edit in edits:
            args += [edit.key, edit.operation.value, edit.raw]
        reply: Any = await call(
            "update",
            self._timeout,
            lambda: self._apply_many(keys=keys.versioned, args=args),
        )
        self._check(reply, base_version)
        return Commit(
            version=int(reply[1]),
            edits=edits,
            at=now,
            user_id=origin.user_id if origin else None,
            device_id=origin.device_id if origin else None,
        )

    def _check(self, reply: Any, base_version: int | None) -> None:
        """Raise what a script's refusal means."""
        status = reply[0]
        if status == b"OK":
            return
        if status == b"VERSION_CONFLICT":
            assert base_version is not None
            raise VersionConflict(current_version=int(reply[1]), base_version=base_version)
        if status == b"STATE_TOO_LARGE":
            raise LimitExceeded(
                f"session state would grow to {reply[1]} bytes; the limit is "
                f"{self._max_state_bytes} bytes",
                status=413,
                error_code="STATE_TOO_LARGE",
                details={"limit_bytes": self._max_state_bytes, "would_be_bytes": int(reply[1])},
            )
        if status == b"TOO_MANY_KEYS":
            raise LimitExceeded(
                f"session already holds {self._max_keys} keys; the limit is {self._max_keys}",
                status=413,
                error_code="TOO_MANY_KEYS",
                details={"limit_keys": self._max_keys},
            )
        raise RuntimeError(f"unexpected reply from the update script: {status!r}")

    async def snapshot(self, session_id: str) -> Snapshot:
        """The whole state and its version, read atomically."""
        keys = Keys(session_id)
        result: Any = await call(
            "snapshot",
            self._timeout,
            lambda: self._snapshot(keys=[keys.state, keys.meta], readonly=True),
        )
        flat, meta = result
        values = {flat[i].decode(): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}
        version, created_at, updated_at = (_int(x) for x in meta[:3])
        return Snapshot(
            session_id=session_id,
            values=values,
            version=version or 0,
            created_at=created_at,
            updated_at=updated_at,
            updated_by_user=_text(meta[3]),
            updated_by_device=_text(meta[4]),
        )

    async def changes_since(self, session_id: str, version: int) -> list[Change] | None:
        """The changes after ``version``, or None (snapshot), decided inside Redis.

        The script returns no records when the history does not reach back or
        the replay is over budget, so only a replay within MAX_STATE_BYTES is
        ever read and decoded.
        """
        keys = Keys(session_id)
        reply: Any = await call(
            "history",
            self._timeout,
            lambda: self._changes(
                keys=[keys.meta, keys.history],
                args=[version, self._max_replay_bytes],
                readonly=True,
            ),
        )
        if reply[0] != b"CHANGES":
            return None
        return [c for r in reply[1:] for c in changes_from_record(orjson.loads(r))]

    async def save_restore_point(
        self, session_id: str, *, point_id: str, label: str, origin: Origin, keep: int
    ) -> RestorePoint:
        """Copy the state into a restore point in one script round trip."""
        keys = Keys(session_id)
        args: list[Any] = [
            point_id,
            orjson.dumps(label),
            int(self._clock()),
            orjson.dumps(origin.user_id),
            orjson.dumps(origin.device_id),
            keep,
            self._ttl_ms,
        ]
        reply: Any = await call(
            "snapshot save",
            self._timeout,
            lambda: self._save_point(keys=keys.versioned, args=args),
        )
        return RestorePoint.from_description(orjson.loads(reply))

    async def restore_points(self, session_id: str) -> list[RestorePoint]:
        """Descriptions only (the states stay in Redis)."""
        keys = Keys(session_id)
        reply: Any = await call(
            "snapshot list",
            self._timeout,
            lambda: self._list_points(keys=[keys.snapshots, keys.snapshot_ids], readonly=True),
        )
        return [RestorePoint.from_description(orjson.loads(r)) for r in reply if r is not None]

    async def restore_point(
        self, session_id: str, point_id: str
    ) -> tuple[RestorePoint, bytes] | None:
        """One restore point with its state."""
        keys = Keys(session_id)
        desc: Any = await call(
            "snapshot get", self._timeout, lambda: self._client.hget(keys.snapshots, point_id)
        )
        state: Any = await call(
            "snapshot get",
            self._timeout,
            lambda: self._client.hget(keys.snapshot_states, point_id),
        )
        if desc is None or state is None:
            return None
        return RestorePoint.from_description(orjson.loads(desc)), bytes(state)

    async def delete_session(self, session_id: str) -> int:
        """UNLINK every versioned key of the session."""
        keys = Keys(session_id)
        reply: Any = await call(
            "session delete", self._timeout, lambda: self._delete(keys=keys.versioned)
        )
        return int(reply)

    async def revoke(
        self,
        *,
        until: int,
        token_id: str | None = None,
        session_id: str | None = None,
        device_id: str | None = None,
        issued_before: int | None = None,
    ) -> None:
        """SET the revocation with an expiry at ``until`` (Redis forgets it then)."""
        if token_id is not None:
            key = _revoked_token_key(token_id)
            await call("revoke", self._timeout, lambda: self._client.set(key, b"1", exat=until))
        if session_id is not None and device_id is not None and issued_before is not None:
            key = Keys(session_id).revoked_device(device_id)
            await call(
                "revoke",
                self._timeout,
                lambda: self._client.set(key, str(issued_before), exat=until),
            )

    async def is_revoked(
        self, *, token_id: str | None, session_id: str, device_id: str, issued_at: int | None
    ) -> bool:
        """One GET per kind of revocation (they live on different cluster slots)."""
        if token_id is not None:
            key = _revoked_token_key(token_id)
            if await call("revocation", self._timeout, lambda: self._client.exists([key])):
                return True
        device_key = Keys(session_id).revoked_device(device_id)
        raw: Any = await call("revocation", self._timeout, lambda: self._client.get(device_key))
        return raw is not None and (issued_at is None or issued_at <= int(raw))

    async def put_ticket(self, ticket_hash: str, record: bytes, *, expires_at: int) -> None:
        """SET with an expiry: Redis forgets an unclaimed ticket by itself."""
        key = _ticket_key(ticket_hash)
        await call("handoff", self._timeout, lambda: self._client.set(key, record, exat=expires_at))

    async def claim_ticket(self, ticket_hash: str, user_id: str) -> tuple[str, bytes | None]:
        """Check the user and delete in one script: one claim wins on any process."""
        key = _ticket_key(ticket_hash)
        reply: Any = await call(
            "handoff", self._timeout, lambda: self._claim(keys=[key], args=[user_id])
        )
        status = reply[0].decode()
        return status, bytes(reply[1]) if status == "OK" else None

    async def ping(self) -> float:
        """Round-trip time of a small write, so that a Redis refusing writes (OOM,
        READONLY replica) is reported as unavailable, not only one that is down."""
        started = time.perf_counter()
        await call(
            "health write",
            self._timeout,
            lambda: self._client.set(self._health_key, str(int(self._clock())), px=60_000),
        )
        return time.perf_counter() - started

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send batched updates (Redis expires sessions by itself)."""
        if self._batcher is not None:
            await self._batcher.run(task_status=task_status)
        else:
            task_status.started()
            await trio.sleep_forever()


def _ticket_key(ticket_hash: str) -> str:
    return f"syncbridge:handoff:{ticket_hash}"


def _revoked_token_key(token_id: str) -> str:
    return f"syncbridge:revoked:{token_id}"


def _tail(session_id: str, origin: Origin | None) -> str:
    """The envelope's identity fields, which the scripts append after "payload"."""
    tail = orjson.dumps(
        {
            "session_id": session_id,
            "user_id": origin.user_id if origin else None,
            "device_id": origin.device_id if origin else None,
        }
    )
    return "," + tail.decode()[1:]
