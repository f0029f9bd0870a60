"""Sending small JSON and text HTTP responses over ASGI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

__all__ = ["ASGISend", "send_json", "send_text"]

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


async def send_text(
    send: ASGISend,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """One complete response with a body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: ASGISend, status: int, body: Any, *, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """One complete JSON response."""
    await send_text(
        send,
        status,
        orjson.dumps(body),
        content_type=b"application/json",
        headers=headers,
    )
