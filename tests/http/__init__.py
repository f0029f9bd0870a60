"""End to end: the HTTP API v1 under hypercorn, with real WebSocket devices alongside.

Every test runs on the memory store and on a real redis-server (the ``store``
fixture); HTTP calls go through httpx, which runs under trio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from syncbridge.protocol.messages import MessageType

from ..conftest import RunningServer, mint

__all__ = ["SERVICE", "apply_pushes", "bearer", "http_client", "service_token"]

SERVICE = ("service",)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def service_token(**kw: Any) -> str:
    """A service token (its own session/device claims do not limit it)."""
    return mint(user="backend", device="svc", session="ops", roles=SERVICE, **kw)


@asynccontextmanager
async def http_client(
    server: RunningServer, token: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    headers = bearer(token) if token is not None else {}
    async with httpx.AsyncClient(base_url=server.http, headers=headers, timeout=10) as client:
        yield client


def apply_pushes(state: dict[str, Any], pushes: list[dict[str, Any]]) -> int:
    """Apply StateUpdate pushes to ``state`` as a v1 client does; return the last version."""
    version = 0
    for push in pushes:
        assert push["type"] == MessageType.STATE_UPDATE
        payload = push["payload"]
        if payload["operation"] == "DELETE":
            state.pop(payload["key"], None)
        else:
            state[payload["key"]] = payload["value"]
        version = payload["version"]
    return version
