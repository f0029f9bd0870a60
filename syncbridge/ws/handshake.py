"""The opening handshake of ``/ws``, done by websockets' sans-IO ServerProtocol.

The router has already read the request head; the protocol parses it (request
line and header limits answer 414 / 431 by themselves), the application admits
or refuses it (draining, Origin, caps: a status and a readable JSON body), and
the protocol builds the 101 (or 4xx) response. No handshake code of our own.
"""

from __future__ import annotations

import email.utils
import http
import socket
from collections.abc import Callable

import orjson
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from syncbridge.ws.socket import WebSocket

__all__ = ["Admit", "Refusal", "open_websocket", "refusal_response"]

#: (HTTP status, message) for a handshake the application refuses.
Refusal = tuple[int, str]
#: The application's admission check: None admits, a Refusal refuses.
Admit = Callable[[Request], Refusal | None]


def refusal_response(status: int, message: str) -> Response:
    """A handshake refusal with a JSON body ``{"error": message}``; a transient one
    (429, 503) says when to retry."""
    body = orjson.dumps({"error": message})
    status_ = http.HTTPStatus(status)
    retry = [("Retry-After", "1")] if status in (429, 503) else []
    return Response(
        status_.value,
        status_.phrase,
        Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                *retry,
            ]
        ),
        body,
    )


async def open_websocket(
    sock: socket.socket,
    head: bytes,
    *,
    max_message_bytes: int,
    deflate: bool,
    admit: Admit,
) -> WebSocket | None:
    """Answer the handshake in ``head`` on ``sock``; the open WebSocket, or None when
    the request was refused or invalid (the answer has been written; close the socket).

    The caller bounds the time this takes (a peer may not read the response).
    """
    protocol = ServerProtocol(
        max_size=max_message_bytes,
        extensions=[ServerPerMessageDeflateFactory()] if deflate else None,
    )
    protocol.receive_data(head)
    events = protocol.events_received()
    request = events[0] if events and isinstance(events[0], Request) else None
    if request is not None:
        refusal = admit(request)
        response = protocol.accept(request) if refusal is None else refusal_response(*refusal)
        protocol.send_response(response)
        accepted = response.status_code == 101
    else:
        accepted = False  # the protocol queued its own 4xx (or nothing) for a bad request
    if accepted and head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1:
        _forget_request(protocol)
    websocket = WebSocket(sock, protocol)
    # Frames that came in the same read as the head (a client that did not wait
    # for the 101) were parsed already: they are the socket's first messages.
    websocket.queue_events(events[1:])
    websocket.flush_protocol()  # the response (and, when refused, end of stream)
    await websocket.wait_flushed()
    return websocket if accepted else None


def _forget_request(protocol: ServerProtocol) -> None:
    """Let the handshake request go: the protocol's parser keeps it as a local for the
    connection's lifetime (~1.5 KiB per idle socket).

    Only when nothing came after the request head (the client waits for the 101, as
    RFC 6455 §4.1 asks): the parser then holds no partly read frame, and a fresh one
    (which, the connection being open, starts at the first frame) reads exactly what
    the old one would have. Protocol.__init__ starts its parser the same way.
    """
    parser = getattr(protocol, "parser", None)
    reader = getattr(protocol, "reader", None)
    if parser is None or reader is None or reader.buffer:
        return
    protocol.parser = protocol.parse()
    next(protocol.parser)
    reader.buffer = bytearray()  # the head's bytes were read: drop their capacity too
