"""The secret the command-line tools sign tokens with: JWT_SECRET, or a try-out server's."""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

from syncbridge import tryout
from syncbridge.settings import Settings

__all__ = ["port_of", "signing_secret"]


def port_of(url: str) -> int:
    """The port a ``http(s)://`` or ``ws(s)://`` URL points at (its scheme's default)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return port or (443 if parts.scheme in ("https", "wss") else 80)


def signing_secret(settings: Settings, port: int) -> str:
    """``JWT_SECRET`` when set; else the secret of the try-out server on ``port``.

    Raises ConfigError (one line for the operator) when neither exists. A note on
    stderr says which secret was used, as a try-out token dies with its server.
    """
    if not settings.secret_is_ephemeral:
        return settings.jwt_secret
    secret = tryout.read_secret(port)
    print(
        f"syncbridge: JWT_SECRET is not set: using the secret of the try-out server on port "
        f"{port}; the token works only until that server stops",
        file=sys.stderr,
    )
    return secret
