"""What went wrong, and what the troubleshooting runbook says to do about it.

Each function turns one kind of failure (an exception from the client or the
network, or an answer from the server) into a :class:`StepFailed`: one line of
detail for the verdict and the runbook's resolution.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import trio
from trio_websocket import ConnectionRejected

from syncbridge.client import AuthFailed, Disconnected, ServerError

__all__ = [
    "BROADCAST",
    "DRAINING",
    "LOGS",
    "NO_SECRET",
    "STORE",
    "STORE_FULL",
    "WRONG_SECRET",
    "StepFailed",
    "auth_failure",
    "disconnected",
    "first_leaf",
    "listening",
    "network_failure",
    "not_syncbridge",
    "rejected",
    "server_error",
    "store_advice",
    "too_slow",
]

LOGS: Final = "Check the service logs: `journalctl -u harmonyflow-session -n 100`"
STORE: Final = (
    "Redis connection: `redis-cli ping` should return PONG; check REDIS_ADDR/REDIS_URL "
    "(and REDIS_PASSWORD) and that Redis listens: `ss -tlnp | grep 6379`"
)
STORE_FULL: Final = (
    "Redis memory full: `redis-cli INFO memory | grep used_memory`; raise maxmemory "
    "(keep maxmemory-policy noeviction, see config/redis-syncbridge.conf)"
)
DRAINING: Final = (
    "The service is shutting down (it received SIGTERM); wait for the restart "
    "(`systemctl status harmonyflow-session`) and run the check again"
)
WRONG_SECRET: Final = (
    "Service and tests must use the same JWT_SECRET: export the service's value "
    "(`set -a; . /etc/syncbridge/env; set +a`) before running the check, or pass --token"
)
NO_SECRET: Final = (
    "Export the service's JWT_SECRET (`set -a; . /etc/syncbridge/env; set +a`) or pass "
    "--token with a token from `python -m syncbridge token --user U --device D --session S`"
)
EXPIRED: Final = (
    "Token expired: mint a new one (`python -m syncbridge token ... --ttl 15m`) or use the "
    "refresh flow (Auth again with AuthSuccess.new_token)"
)
TOKEN_FORMAT: Final = (
    "Token format: an HS256 JWT with user_id, device_id, session_id and exp claims "
    "(mint one with `python -m syncbridge token`)"
)
BROADCAST: Final = (
    "Other clients don't receive updates: all clients must use the same session_id in "
    "their token; look for slow-consumer closes (4000) in the service logs"
)
# The runbook's table of error codes, with SyncBridge's settings named.
_ERROR: Final = {
    400: "Check message format (see docs/protocol.md)",
    401: "Re-authenticate with a valid token",
    403: "Authentication required: Auth first, with a token for this session",
    404: "Resource doesn't exist",
    413: "The session's state is too large: MAX_STATE_BYTES / MAX_KEYS",
    429: "Rate limited: wait and retry (RATE_LIMIT / RATE_BURST)",
    500: LOGS,
    503: STORE,
}
_CLOSE: Final = {
    1001: DRAINING,
    1009: "A message was larger than MAX_MESSAGE_BYTES (default 512 KiB)",
    4000: "Closed as a slow consumer: the client did not read fast enough (OUTBOX_SIZE)",
    4001: "Closed for silence: clients must send a Heartbeat every 30 s (LIVENESS_TIMEOUT)",
    4401: EXPIRED,
    4408: "Closed for not authenticating within AUTH_TIMEOUT",
    4429: "Closed for flooding: too many messages refused in a row (RATE_LIMIT / RATE_BURST)",
}


class StepFailed(Exception):
    """A step's failure: what was seen, and what to do about it."""

    def __init__(self, detail: str, resolution: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.resolution = resolution


def listening(url: str) -> str:
    """The runbook's "Cannot Connect" resolution for the server at ``url``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    return (
        f"Is the service listening? `ss -tlnp | grep {port}`; start it with "
        "`python -m syncbridge` (or `systemctl restart harmonyflow-session`) "
        "and check SERVER_ADDR"
    )


def too_slow(url: str, timeout: float) -> str:
    """The resolution when the server at ``url`` did not answer within ``timeout``."""
    return (
        f"No answer within {timeout:g}s: check firewalls and proxies on the way to "
        f"{urlsplit(url).hostname}, the service's CPU (`htop`) and its logs "
        "(`journalctl -u harmonyflow-session -n 100`)"
    )


def not_syncbridge(url: str) -> str:
    """The resolution when ``url`` answers, but not like SyncBridge."""
    return f"Does {url} point at SyncBridge? `curl -i {url}/health` should return its JSON"


def store_advice(error: str) -> str:
    """Redis out of memory (noeviction refuses writes) or Redis unreachable."""
    return STORE_FULL if "OOM" in error or "maxmemory" in error else STORE


def auth_failure(exc: AuthFailed) -> StepFailed:
    """An AuthFailure, by its cause: wrong secret, expiry, device limit or token format."""
    detail = f"AuthFailure {exc.code}: {exc.message}"
    text = exc.message.lower()
    if "signature" in text:
        return StepFailed(detail, WRONG_SECRET)
    if "expired" in text:
        return StepFailed(detail, EXPIRED)
    if exc.code == 503 or exc.error_code == "STORE_UNAVAILABLE":
        return StepFailed(detail, store_advice(exc.message))
    if exc.code == 429 or exc.error_code == "TOO_MANY_DEVICES":
        return StepFailed(detail, "Too many devices online in the session: MAX_DEVICES_PER_SESSION")
    return StepFailed(detail, TOKEN_FORMAT)


def server_error(exc: ServerError) -> StepFailed:
    """An Error (6) answer, by its code."""
    code = f" {exc.error_code}" if exc.error_code else ""
    advice = store_advice(exc.message) if exc.code == 503 else _ERROR.get(exc.code)
    return StepFailed(f"Error {exc.code}{code}: {exc.message}", advice)


def disconnected(exc: Disconnected) -> StepFailed:
    """The server closed the connection, by its close code."""
    detail = f"connection closed by the server: {exc.code} {exc.reason or ''}".rstrip()
    return StepFailed(detail, _CLOSE.get(exc.code or 0, LOGS))


def rejected(exc: BaseException, ws_url: str) -> StepFailed:
    """The WebSocket upgrade was answered with an HTTP status instead of 101."""
    assert isinstance(exc, ConnectionRejected)
    status = exc.status_code
    try:
        said = orjson.loads(exc.body or b"{}").get("error", "")
    except (orjson.JSONDecodeError, AttributeError):
        said = ""
    detail = f"WebSocket upgrade refused with HTTP {status}" + (f": {said}" if said else "")
    if status == 503:
        return StepFailed(detail, DRAINING)
    if status == 403:
        return StepFailed(detail, "Origin refused: check ALLOWED_ORIGINS")
    return StepFailed(
        detail,
        "Behind nginx? /ws needs `proxy_http_version 1.1` and the Upgrade and Connection "
        f"headers (config/nginx-syncbridge.conf); check --ws-url {ws_url}",
    )


def network_failure(exc: BaseException, url: str, *, timeout: float) -> StepFailed:
    """No answer at all from ``url``: refused, timed out, unknown host, ..."""
    where = urlsplit(url).netloc
    causes = _causes(exc)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return StepFailed(f"connection refused by {where}", listening(url))
    if any(isinstance(c, TimeoutError | trio.TooSlowError) for c in causes):
        return StepFailed(f"no answer from {where} within {timeout:g}s", too_slow(url, timeout))
    tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
    if tls is not None:
        return StepFailed(
            f"TLS handshake with {where} failed: {tls}",
            "Check the certificate nginx serves (ssl_certificate), or check the service "
            "itself on its own address: --url http://127.0.0.1:8080",
        )
    if any(isinstance(c, socket.gaierror) for c in causes):
        return StepFailed(f"cannot resolve the host of {where}", "Check the host in the URL")
    return StepFailed(f"cannot reach {where}: {exc}", listening(url))


def first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first exception in ``group`` that is not itself a group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes, contexts and reasons, and the members of groups among them."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        reason = getattr(current, "reason", None)  # urllib's URLError wraps the OSError
        if isinstance(reason, BaseException):
            todo.append(reason)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return seen
