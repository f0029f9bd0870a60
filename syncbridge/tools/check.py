"""``python -m syncbridge check``: the runbook's health check, one verdict line per step.

==============  ==========================================================
health          ``GET /health`` answers 200 with status ``ok`` (``/health/details``
                with a metrics token minted from JWT_SECRET, when it can)
store           the health document's store ping is ok (and how long it took)
ws-connect      two WebSocket connections open (device A and device B)
ws-auth         both authenticate with tokens minted from JWT_SECRET (or ``--token``)
ws-heartbeat    a Heartbeat is answered with a HeartbeatAck echoing it
ws-snapshot     a SnapshotRequest is answered with the session's snapshot
ws-broadcast    A's StateUpdate reaches B, carrying A's identity
ws-cleanup      the key the check wrote is deleted again
==============  ==========================================================

Every failure is followed by the resolution the troubleshooting runbook gives
for it; a step that cannot run after an earlier failure is reported as SKIP.
The check writes one key, ``syncbridge-check:<random>``, in its own session
``syncbridge-check-<random>`` (or in the token's session with ``--token``), and
deletes it again.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import ConnectionRejected

from syncbridge.auth import METRICS_ROLE, TokenAuthority
from syncbridge.client import (
    AuthFailed,
    Client,
    ConnectFailed,
    Disconnected,
    ServerError,
    open_client,
)
from syncbridge.errors import ConfigError
from syncbridge.protocol.messages import MessageType
from syncbridge.settings import Settings, load_settings
from syncbridge.tools import advice
from syncbridge.tools.advice import StepFailed
from syncbridge.tools.health_probe import fetch_health, health_verdict, store_verdict
from syncbridge.tools.secret import port_of, signing_secret

__all__ = [
    "STEPS",
    "CheckReport",
    "StepResult",
    "add_arguments",
    "default_url",
    "main",
    "run_check",
]

STEPS: Final = (
    "health",
    "store",
    "ws-connect",
    "ws-auth",
    "ws-heartbeat",
    "ws-snapshot",
    "ws-broadcast",
    "ws-cleanup",
)
_WS_STEPS: Final = STEPS[2:]


@attrs.frozen(kw_only=True)
class StepResult:
    """The verdict on one step: PASS, FAIL or SKIP, what was seen, and what to do."""

    name: str
    verdict: str
    detail: str
    resolution: str | None = None

    @property
    def line(self) -> str:
        """The verdict line as printed."""
        return f"{self.verdict} {self.name:<12} {self.detail}"


class CheckReport:
    """The verdicts of one run, printed as they come."""

    def __init__(self, out: TextIO, *, session_id: str) -> None:
        self.results: list[StepResult] = []
        self.session_id = session_id
        self._out = out
        self._advised: set[str] = set()

    def add(self, result: StepResult) -> None:
        """Record and print a verdict, and its resolution unless already printed."""
        self.results.append(result)
        self.say(result.line)
        if result.resolution and result.resolution not in self._advised:
            self._advised.add(result.resolution)
            self.say(f"     -> {result.resolution}")

    def say(self, line: str) -> None:
        """Print one line of the report (nothing once the reader has gone, as ``| head -1``)."""
        try:
            print(line, file=self._out, flush=True)
        except BrokenPipeError:
            # Keep checking (the exit status still tells), but write to /dev/null
            # from now on, so neither this print nor the flush at exit raises again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._out.fileno())
            os.close(devnull)

    @property
    def passed(self) -> bool:
        """Whether every step ran and passed."""
        return bool(self.results) and all(r.verdict == "PASS" for r in self.results)


def default_url(settings: Settings) -> str:
    """The HTTP base URL of a server with ``settings`` on this machine."""
    host = settings.host
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _ws_url_for(base: str) -> str:
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path}/ws"


class _Check:
    """One run of the steps against one server."""

    def __init__(
        self,
        *,
        url: str,
        ws_url: str,
        timeout: float,
        tokens: tuple[str, str] | str,
        nonce: str,
        report: CheckReport,
        operator_token: str | None = None,
    ) -> None:
        self.url = url
        self.ws_url = ws_url
        self.timeout = timeout
        # Two tokens, or why none could be minted.
        self.tokens = tokens
        self.operator_token = operator_token
        self.nonce = nonce
        self.key = f"syncbridge-check:{nonce}"
        self.report = report
        self.health: dict[str, Any] | None = None
        self.reached = False
        self.clients: list[Client] = []
        self.identity: dict[str, Any] = {}
        self.written = False

    # -- running steps ----------------------------------------------------------

    async def step(
        self,
        name: str,
        action: Callable[[], Awaitable[str]],
        on_timeout: Callable[[], StepFailed] | None = None,
    ) -> bool:
        """Run one step under the time limit and report its verdict."""
        try:
            with trio.fail_after(self.timeout):
                detail = await action()
        except StepFailed as exc:
            failure = exc
        except trio.TooSlowError:
            failure = (
                on_timeout()
                if on_timeout
                else StepFailed(
                    f"no answer within {self.timeout:g}s", advice.too_slow(self.url, self.timeout)
                )
            )
        except AuthFailed as exc:
            failure = advice.auth_failure(exc)
        except ServerError as exc:
            failure = advice.server_error(exc)
        except Disconnected as exc:
            failure = advice.disconnected(exc)
        else:
            self.passed(name, detail)
            return True
        self.failed(name, failure)
        return False

    def passed(self, name: str, detail: str) -> None:
        """Report a step that passed."""
        self.report.add(StepResult(name=name, verdict="PASS", detail=detail))

    def failed(self, name: str, failure: StepFailed) -> None:
        """Report a step that failed, with its resolution."""
        self.report.add(
            StepResult(
                name=name, verdict="FAIL", detail=failure.detail, resolution=failure.resolution
            )
        )

    def skip(self, names: tuple[str, ...], why: str) -> None:
        """Report steps that cannot run."""
        for name in names:
            self.report.add(StepResult(name=name, verdict="SKIP", detail=why))

    async def run(self) -> None:
        """Every step in order."""
        await self.step("health", self._health)
        if self.health is None:
            self.skip(("store",), "no health document")
        else:
            await self.step("store", self._store)
        if not self.reached:
            self.skip(_WS_STEPS, "the service did not answer over HTTP")
            return
        failure: StepFailed | None = None
        connected = False
        # Each client's nursery must nest inside (not across) the steps' cancel
        # scopes, so the connections are opened here rather than in a step.
        try:
            async with self._open() as device_a, self._open() as device_b:
                connected = True
                self.clients = [device_a, device_b]
                self.passed("ws-connect", f"devices A and B connected to {self.ws_url}")
                await self._ws_steps()
        except ConnectFailed as exc:
            if connected:
                raise
            if isinstance(exc.__cause__, ConnectionRejected):
                failure = advice.rejected(exc.__cause__, self.ws_url)
            else:
                failure = advice.network_failure(exc, self.ws_url, timeout=self.timeout)
        if failure is not None:
            self.failed("ws-connect", failure)
            self.skip(_WS_STEPS[1:], "no WebSocket connection")

    async def _ws_steps(self) -> None:
        authenticated = await self.step("ws-auth", self._auth)
        # Heartbeats need no authentication, so this runs either way.
        await self.step("ws-heartbeat", self._heartbeat)
        if not authenticated:
            self.skip(_WS_STEPS[3:], "not authenticated")
            return
        await self.step("ws-snapshot", self._snapshot)
        await self.step("ws-broadcast", self._broadcast, self._broadcast_too_slow)
        if self.written:
            await self.step("ws-cleanup", self._cleanup)
        else:
            self.skip(("ws-cleanup",), "nothing was written")

    # -- HTTP -------------------------------------------------------------------

    async def _health(self) -> str:
        status, self.health = await fetch_health(
            self.url, timeout=self.timeout, token=self.operator_token
        )
        self.reached = True
        return health_verdict(status, self.health, self.url)

    async def _store(self) -> str:
        assert self.health is not None
        return store_verdict(self.health, self.url)

    # -- WebSocket ----------------------------------------------------------------

    def _open(self) -> AbstractAsyncContextManager[Client]:
        return open_client(self.ws_url, heartbeat_interval=None, connect_timeout=self.timeout)

    async def _auth(self) -> str:
        if isinstance(self.tokens, str):
            raise StepFailed(self.tokens, advice.NO_SECRET)
        device_a, device_b = self.clients
        self.identity = await device_a.authenticate(
            self.tokens[0], device_type="syncbridge-check", device_name="check device A"
        )
        self.report.session_id = self.identity["session_id"]
        other = await device_b.authenticate(
            self.tokens[1], device_type="syncbridge-check", device_name="check device B"
        )
        return (
            f"devices {self.identity['device_id']} and {other['device_id']} "
            f"joined session {self.identity['session_id']}"
        )

    async def _heartbeat(self) -> str:
        sent = time.perf_counter()
        ack = await self.clients[0].heartbeat(client_time=self.nonce)
        elapsed = (time.perf_counter() - sent) * 1000
        if ack.get("client_time") != self.nonce:
            raise StepFailed(
                f"HeartbeatAck did not echo client_time (got {ack.get('client_time')!r})",
                advice.LOGS,
            )
        server_time = ack.get("server_time")
        if not isinstance(server_time, int | float):
            raise StepFailed(f"HeartbeatAck has no server_time (got {server_time!r})", advice.LOGS)
        skew = server_time - int(time.time())
        detail = f"HeartbeatAck in {elapsed:.1f} ms, server clock {skew:+.0f} s"
        if abs(skew) > 30:
            detail += " (check NTP: token expiry depends on it)"
        return detail

    async def _snapshot(self) -> str:
        snapshot = await self.clients[0].snapshot()
        session_id = self.identity["session_id"]
        if snapshot.get("session_id") != session_id:
            raise StepFailed(
                f"SnapshotResponse is for session {snapshot.get('session_id')!r}, "
                f"not {session_id!r}",
                "Wrong session ID: verify session_id in the JWT matches the request",
            )
        state = snapshot.get("state_data") or {}
        return f"session {session_id} at version {snapshot.get('version')}, {len(state)} keys"

    async def _broadcast(self) -> str:
        device_a, device_b = self.clients
        value = {"nonce": self.nonce, "written_at": time.time()}
        sent = time.perf_counter()
        version = await device_a.update(self.key, value)
        self.written = True
        while True:
            message = await device_b.wait_for(MessageType.STATE_UPDATE, timeout=self.timeout)
            payload = message.get("payload") or {}
            if payload.get("key") == self.key:
                break
        elapsed = (time.perf_counter() - sent) * 1000
        sender = (message.get("user_id"), message.get("device_id"))
        expected = (self.identity.get("user_id", sender[0]), self.identity["device_id"])
        if sender != expected:
            raise StepFailed(
                f"B got the update from {sender[0]}/{sender[1]}, not from A "
                f"({expected[0]}/{expected[1]})",
                "Broadcasts must carry the sender's identity: verify all clients have the "
                "same user_id in their token and check the service version",
            )
        if payload.get("value") != value:
            raise StepFailed(f"B got a different value: {payload.get('value')!r}", advice.LOGS)
        return (
            f"A wrote {self.key} (version {version}); B got it from {sender[1]} in {elapsed:.1f} ms"
        )

    def _broadcast_too_slow(self) -> StepFailed:
        if self.written:
            return StepFailed(
                f"B did not receive A's update within {self.timeout:g}s", advice.BROADCAST
            )
        return StepFailed(
            f"A's StateUpdate was not acknowledged within {self.timeout:g}s",
            "Writes are slow: check `redis-cli --latency` and STORE_TIMEOUT",
        )

    async def _cleanup(self) -> str:
        version = await self.clients[0].delete(self.key)
        return f"deleted {self.key} (version {version})"


def _operator_token(settings: Settings, session_id: str) -> str | None:
    """A short metrics-role token for /health/details, when JWT_SECRET is known."""
    if settings.secret_is_ephemeral:
        return None
    token, _ = TokenAuthority(settings.jwt_secret).mint(
        user_id="syncbridge-check",
        device_id="syncbridge-check-health",
        session_id=session_id,
        roles=(METRICS_ROLE,),
        ttl=60,
        now=time.time(),
    )
    return token


def _tokens(
    settings: Settings, token: str | None, session_id: str, port: int
) -> tuple[str, str] | str:
    """Tokens for devices A and B, or why none can be minted."""
    if token is not None:
        # Many sockets may share one token; the broadcast still reaches the other socket.
        return token, token
    try:
        secret = signing_secret(settings, port)
    except ConfigError as exc:
        return str(exc)
    authority = TokenAuthority(secret)
    now = time.time()
    minted = [
        authority.mint(
            user_id="syncbridge-check",
            device_id=f"syncbridge-check-{name}",
            session_id=session_id,
            ttl=300,
            now=now,
        )[0]
        for name in ("a", "b")
    ]
    return minted[0], minted[1]


async def run_check(
    url: str,
    *,
    settings: Settings,
    ws_url: str | None = None,
    timeout: float = 5.0,
    token: str | None = None,
    out: TextIO | None = None,
) -> CheckReport:
    """Run every step against the server at ``url`` (``http://HOST:PORT``) and report.

    Tokens are minted from ``settings.jwt_secret`` unless ``token`` (used by both
    devices) is given.
    """
    base = url.rstrip("/").removesuffix("/health")
    nonce = secrets.token_hex(6)
    session_id = f"syncbridge-check-{nonce}"
    report = CheckReport(out or sys.stdout, session_id=session_id)
    check = _Check(
        url=base,
        ws_url=ws_url or _ws_url_for(base),
        timeout=timeout,
        tokens=_tokens(settings, token, session_id, port_of(base)),
        operator_token=_operator_token(settings, session_id),
        nonce=nonce,
        report=report,
    )
    report.say(f"syncbridge check of {base} (WebSocket {check.ws_url}, check key {check.key})")
    await check.run()
    failed = [r.name for r in report.results if r.verdict == "FAIL"]
    summary = (
        f"OK: all {len(report.results)} steps passed"
        if report.passed
        else f"FAILED: {', '.join(failed)} ({len(failed)} of {len(STEPS)} steps failed)"
    )
    report.say(summary)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``check`` command's options."""
    parser.add_argument(
        "--url",
        help="the server's HTTP base URL (default: http://localhost:<port of SERVER_ADDR>)",
    )
    parser.add_argument("--ws-url", help="the WebSocket URL (default: the --url's /ws)")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds each step may take (default 5)"
    )
    parser.add_argument(
        "--token",
        help="a token to use for both devices instead of minting from JWT_SECRET "
        "(the check then writes and deletes one key in that token's session)",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file")


def main(args: argparse.Namespace) -> int:
    """Run the check from parsed arguments; 0 when every step passed."""
    settings = load_settings(config_file=args.config)
    try:
        report = trio.run(
            lambda: run_check(
                args.url or default_url(settings),
                settings=settings,
                ws_url=args.ws_url,
                timeout=args.timeout,
                token=args.token,
            )
        )
    except KeyboardInterrupt:
        return 130
    return 0 if report.passed else 1
