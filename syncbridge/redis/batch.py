"""Update scripts that arrive together go to Redis as one pipeline.

coredis spends ~110-210 µs of CPU per command (pool checkout, request objects,
parsing) and next to nothing per extra command in a pipeline (~14 µs each,
docs/performance.md §11). So the store does not send each update's script on
its own: callers queue their call, and one task sends everything queued as one
pipeline, then the next batch while that one is in flight accumulates, and at
most one pipeline goes out per millisecond (PACE). Under light load a batch is
one call (no added wait: a sender idle for longer sends at once); under steady
load the calls of a millisecond share one pipeline and the cost per update falls
by an order of magnitude.

The guarantees do not change: each caller gets its own script's reply (acked
only once Redis ran it); scripts of one session keep their order (the service
sends one per session at a time, and a pipeline runs in order); nothing is
retried except a script Redis did not know (NOSCRIPT: it did not run); a
pipeline that fails fails each of its calls with StoreUnavailable, exactly as a
lone call would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import attrs
import coredis.exceptions
import trio

from syncbridge.errors import StoreUnavailable
from syncbridge.redis.connection import STORE_FAILURES, RedisClient, translate_errors

__all__ = ["ScriptBatcher"]

log = logging.getLogger(__name__)

#: Most scripts in one pipeline (bounds one reply's size and a batch's latency).
MAX_BATCH: Final = 256
#: At most one pipeline per this many seconds: a pipeline costs the client ~200 µs of
#: CPU however small, so under steady load the calls of a millisecond share one. A
#: call that finds the sender idle for longer goes out at once (no added latency
#: when the load is light).
PACE: Final = 0.001


@attrs.define(eq=False)
class _Call:
    keys: Sequence[str]
    args: Sequence[Any]
    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: BaseException | None = None


class ScriptBatcher:
    """One Lua script, called by many tasks, sent in pipelines by :meth:`run`."""

    def __init__(
        self, client: RedisClient, script: str, *, what: str, timeout: float, pace: float = PACE
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._pace = pace
        self._last_sent = -pace
        self._script = client.register_script(script)
        self._what = what
        self._pending: list[_Call] = []
        self._wake = trio.Event()
        self.batches = 0  # pipelines sent (tests and /debug)
        self.calls = 0
        #: True while :meth:`run` sends; callers without it call the script directly.
        self.running = False

    async def call(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Queue one script call and wait for its reply (the caller bounds the wait).

        A caller cancelled before its call was sent takes it back: it never runs.
        """
        call = _Call(keys, args)
        self._pending.append(call)
        self._wake.set()
        try:
            await call.done.wait()
        except BaseException:
            if not call.done.is_set() and call in self._pending:
                self._pending.remove(call)
            raise
        if call.error is not None:
            raise call.error
        return call.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued calls as pipelines, one at a time, until cancelled."""
        self.running = True
        task_status.started()
        try:
            await self._run()
        finally:
            self.running = False

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wake = trio.Event()
                await self._wake.wait()
            # Paced: what arrives within PACE of the previous pipeline joins the next.
            next_send = self._last_sent + self._pace
            if trio.current_time() < next_send and len(self._pending) < MAX_BATCH:
                await trio.sleep_until(next_send)
            self._last_sent = trio.current_time()
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            try:
                await self._send(batch)
            finally:
                for call in batch:  # cancelled mid-pipeline: its outcome is unknown
                    if not call.done.is_set():
                        call.error = StoreUnavailable(
                            f"store unavailable: {self._what} was interrupted"
                        )
                        call.done.set()

    async def _send(self, batch: list[_Call]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            with translate_errors(self._what), trio.fail_after(self._timeout):
                replies = await self._pipeline(batch)
                unknown = [i for i, r in enumerate(replies) if _is_noscript(r)]
                if unknown:
                    # Redis lost its script cache (restart, SCRIPT FLUSH): those
                    # scripts did not run; load it once and send them again.
                    self._script.sha = await self._client.script_load(self._script.script)
                    again = await self._pipeline([batch[i] for i in unknown])
                    for i, reply in zip(unknown, again, strict=True):
                        replies[i] = reply
        except (StoreUnavailable, trio.TooSlowError) as exc:
            error = (
                exc
                if isinstance(exc, StoreUnavailable)
                else StoreUnavailable(
                    f"store unavailable: {self._what} got no answer within {self._timeout:g}s"
                )
            )
            for call in batch:
                call.error = error
                call.done.set()
            return
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, BaseException):
                try:
                    with translate_errors(self._what):
                        raise reply
                except StoreUnavailable as exc:
                    call.error = exc
                except Exception as exc:  # a bug of ours (bad script): the caller's error
                    call.error = exc
            else:
                call.result = reply
            call.done.set()

    async def _pipeline(self, batch: Sequence[_Call]) -> list[Any]:
        requests = []
        async with self._client.pipeline(transaction=False, raise_on_error=False) as pipe:
            for call in batch:
                requests.append(pipe.evalsha(self._script.sha, keys=call.keys, args=call.args))
        replies: list[Any] = []
        for request in requests:
            try:
                replies.append(await request)
            except STORE_FAILURES as exc:
                replies.append(exc)
        return replies


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, coredis.exceptions.NoScriptError) or (
        isinstance(reply, coredis.exceptions.ResponseError) and "NOSCRIPT" in str(reply)
    )
