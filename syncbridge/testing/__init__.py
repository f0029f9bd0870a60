"""Testing against SyncBridge: an in-process server, tokens and clients, and a pytest plugin.

This package needs only SyncBridge's own dependencies; pytest is imported by
:mod:`syncbridge.testing.plugin` alone, which pytest loads through the
``pytest11`` entry point. See docs/testing.md.
"""

from syncbridge.testing.server import (
    RunningServer,
    ServerStuck,
    open_server,
    server_settings,
    start_server,
)
from syncbridge.testing.tokens import TokenMinter

__all__ = [
    "RunningServer",
    "ServerStuck",
    "TokenMinter",
    "open_server",
    "server_settings",
    "start_server",
]
