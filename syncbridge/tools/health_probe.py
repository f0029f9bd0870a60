"""The HTTP half of the check: fetch ``/health`` and judge the server and its store."""

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


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    # No proxies: an http_proxy meant for the internet must not swallow localhost.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


async def fetch_health(base: str, *, timeout: float) -> tuple[int, dict[str, Any]]:
    """GET ``base``/health: its status and JSON document.

    Raises StepFailed when nothing answers, or when the answer is not JSON.
    """
    url = base + "/health"
    try:
        status, body = await trio.to_thread.run_sync(_get, url, timeout, abandon_on_cancel=True)
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
