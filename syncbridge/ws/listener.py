"""One listening socket for HTTP and ``/ws``: accept, read the request head, route.

A ``GET`` of the WebSocket path goes to SyncBridge's WebSocket engine with the
raw socket; every other request goes to hypercorn as a stream that replays the
head. The head must arrive within HANDSHAKE_TIMEOUT and fit ``MAX_HEAD_BYTES``
(slowloris and oversize heads are closed here, before any parser runs).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import trio

__all__ = ["MAX_HEAD_BYTES", "accept_loop", "read_head", "route"]

log = logging.getLogger(__name__)

#: Largest request head (request line and headers) accepted; hypercorn's default.
MAX_HEAD_BYTES: Final = 16 * 1024
_HEAD_END: Final = b"\r\n\r\n"
_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n"
# A request starts with a method token (RFC 9110 §9: upper-case letters by
# convention; PRI for HTTP/2) and a space; anything else is not HTTP.
_METHOD: Final = re.compile(rb"[A-Z]{1,16}( |$)")
_METHOD_PREFIX: Final = 17
_BAD_REQUEST: Final = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_HEAD_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)
_UPGRADE_WEBSOCKET: Final = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*\r\n", re.I)
# accept() errors that mean "out of resources for now": trio's SocketListener
# waits and tries again rather than dying; so do we.
_TRANSIENT_ACCEPT: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_IGNORED_ACCEPT: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

Handler = Callable[[socket.socket, tuple[str, int]], Awaitable[None]]


async def accept_loop(listener: socket.socket, handler: Handler, nursery: trio.Nursery) -> None:
    """Accept connections on the non-blocking ``listener`` for ever; each one runs
    ``handler(sock, address)`` in ``nursery``.

    Several worker processes may accept on one shared socket: one that loses the
    race sees EAGAIN and waits again.
    """
    while True:
        await trio.lowlevel.wait_readable(listener)
        while True:
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _IGNORED_ACCEPT:
                    continue
                if exc.errno in _TRANSIENT_ACCEPT:
                    log.error("accept failed (%s); retrying in 0.1 s", exc)
                    await trio.sleep(0.1)
                    break
                raise
            sock.setblocking(False)
            nursery.start_soon(handler, sock, address)
        await trio.lowlevel.checkpoint()


async def read_head(sock: socket.socket, *, max_bytes: int = MAX_HEAD_BYTES) -> bytes | None:
    """Read until the end of a request head; what was read (possibly more than the
    head), or None if the peer closed first, the head is over ``max_bytes`` (answered
    431) or it is not HTTP at all (a TLS ClientHello on the plain port, say: answered
    400 at once).

    The caller bounds the time it takes.
    """
    data = b""
    while True:
        try:
            chunk = sock.recv(max_bytes + len(_HEAD_END))
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
        if not _METHOD.match(data[:_METHOD_PREFIX]):
            with contextlib.suppress(OSError):
                sock.send(_BAD_REQUEST)
            return None
        if _HEAD_END in data[: max_bytes + len(_HEAD_END)] or data.startswith(_H2_PREFACE):
            return data
        if len(data) > max_bytes:
            with contextlib.suppress(OSError):
                sock.send(_HEAD_TOO_LARGE)
            return None


def route(head: bytes, ws_path: str) -> str:
    """``"websocket"`` for a WebSocket upgrade (GET with ``Upgrade: websocket``) of
    ``ws_path``, ``"h2c"`` for HTTP/2 prior knowledge, ``"http"`` for everything
    else (a plain GET of ``ws_path`` gets hypercorn's 426 from the app)."""
    if head.startswith(_H2_PREFACE):
        return "h2c"
    line = head[: head.find(b"\r\n")]
    parts = line.split(b" ")
    if len(parts) == 3 and parts[0] == b"GET":
        path = parts[1].split(b"?", 1)[0]
        if path == ws_path.encode() and _UPGRADE_WEBSOCKET.search(
            head, 0, head.find(_HEAD_END) + 2
        ):
            return "websocket"
    return "http"


def without_h2c_upgrade(head: bytes) -> bytes:
    """``head`` without an ``Upgrade: h2c`` request (and its HTTP2-Settings header).

    RFC 9110 §7.8 lets a server ignore Upgrade; the request is then served as
    HTTP/1.1, which is what a server without cleartext HTTP/2 must do.
    """
    end = head.find(_HEAD_END)
    lines = head[:end].split(b"\r\n")
    kept = [
        line
        for line in lines
        if not (
            (line[:8].lower() == b"upgrade:" and b"h2c" in line.lower())
            or line[:15].lower() == b"http2-settings:"
        )
    ]
    if len(kept) == len(lines):
        return head
    return b"\r\n".join(kept) + head[end:]
