"""The HTTP half of the check: fetch the health document and judge the server and its store.

``/health`` tells anyone only the status; the full document (store backend,
latency, error) is ``/health/details``, for an operator token. The check asks
for the details when it can mint such a token and falls back to the status.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson
import trio

from syncbridge.tools import advice
from syncbridge.tools.advice import StepFailed

__all__ = ["fetch_health", "health_verdict", "store_verdict"]

_SLOW_STORE_MS = 50.0


def _get(url: str, timeout: float, token: str | None = None) -> tuple[int, bytes]:
    # No proxies: an http_proxy meant for the internet must not swallow localhost.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


async def fetch_health(
    base: str, *, timeout: float, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The health document: ``/health/details`` with an operator ``token`` when that
    answers it, else ``/health`` (the status alone).

    Raises StepFailed when nothing answers, or when the answer is not JSON.
    """
    if token is not None:
        try:
            details = await _fetch(base + "/health/details", timeout, token)
        except StepFailed:
            details = None  # e.g. 404 with ADMIN_ADDR set: the public answer will do
        if details is not None and isinstance(details[1].get("store"), dict):
            return details
    return await _fetch(base + "/health", timeout, None)


async def _fetch(url: str, timeout: float, token: str | None) -> tuple[int, dict[str, Any]]:
    base = url.rpartition("/health")[0]
    try:
        status, body = await trio.to_thread.run_sync(
            _get, url, timeout, token, abandon_on_cancel=True
        )
    except OSError as exc:  # urllib's URLError included
        raise advice.network_failure(exc, url, timeout=timeout) from None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        raise StepFailed(f"HTTP {status}, not a JSON health document", advice.not_syncbridge(base))
    return status, document


def health_verdict(status: int, document: dict[str, Any], base: str) -> str:
    """The health line's detail, or StepFailed when the server is not healthy."""
    summary = _summary(status, document)
    state = document.get("status")
    store = document.get("store")
    if not isinstance(store, dict):
        store = {}
    if status == 503 or state == "degraded":
        # The summary names the store and its status; the store step gives the error.
        raise StepFailed(summary, advice.store_advice(str(store.get("error", ""))))
    if state == "draining":
        raise StepFailed(summary, advice.DRAINING)
    if status != 200 or state != "ok":
        raise StepFailed(summary, advice.not_syncbridge(base))
    return summary


def store_verdict(document: dict[str, Any], base: str) -> str:
    """The store line's detail (backend and ping latency), or StepFailed."""
    store = document.get("store")
    if not isinstance(store, dict):
        if document.get("status") in ("ok", "draining"):
            # The public answer: "ok" means the store answered its ping.
            return "ok (backend and latency are shown to operator tokens: /health/details)"
        raise StepFailed("the health document has no store section", advice.not_syncbridge(base))
    backend = store.get("backend", "?")
    if store.get("status") != "ok":
        error = str(store.get("error") or "no error given")
        raise StepFailed(
            f"{backend} {store.get('status', 'failing')}: {error}", advice.store_advice(error)
        )
    latency = store.get("latency_ms")
    detail = f"{backend} ok, ping {latency} ms"
    if isinstance(latency, int | float) and latency > _SLOW_STORE_MS:
        detail += " (slow: see `redis-cli --latency` and the network to Redis)"
    return detail


def _summary(status: int, document: dict[str, Any]) -> str:
    parts = [f"{status} {document.get('status', '?')}"]
    if "version" in document:
        parts.append(f"version {document['version']}")
    connections = document.get("active_connections")
    if connections is not None:
        authenticated = document.get("authenticated_connections")
        parts.append(
            f"{connections} connections"
            + (f" ({authenticated} authenticated)" if authenticated is not None else "")
        )
    if "sessions" in document:
        parts.append(f"{document['sessions']} sessions")
    store = document.get("store")
    if isinstance(store, dict):
        latency = store.get("latency_ms")
        parts.append(
            f"store {store.get('backend', '?')} {store.get('status', '?')}"
            + (f" {latency} ms" if latency is not None else "")
        )
    return ", ".join(parts)
