"""syncbridge.testing without pytest fixtures: open_server and start_server in plain trio code."""

from __future__ import annotations

import pytest
import trio

from syncbridge.client import ConnectFailed, open_client
from syncbridge.testing import open_server, server_settings

WAIT = 10.0


async def test_open_server_serves_then_stops_on_exit() -> None:
    with trio.fail_after(WAIT):
        async with open_server(server_settings()) as server:
            async with server.client(user="alice", device="phone") as phone:
                assert await phone.update("theme", "dark") == 1
            async with server.sync_client(user="alice", device="laptop") as laptop:
                assert laptop.state["theme"] == "dark"
        assert server.stopped.is_set()
        with pytest.raises(ConnectFailed):
            async with open_client(server.url, connect_timeout=WAIT):
                pass


async def test_open_server_lets_the_blocks_exception_out_unchanged() -> None:
    with trio.fail_after(WAIT), pytest.raises(KeyError, match="from the block"):
        async with open_server() as server:
            raise KeyError("from the block")
    assert server.stopped.is_set()


def test_server_settings_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:6379/0")
    monkeypatch.setenv("JWT_SECRET", "from-the-shell-" * 4)
    settings = server_settings()
    assert settings.redis_url == ""
    assert settings.jwt_secret != "from-the-shell-" * 4
    assert (settings.host, settings.port) == ("127.0.0.1", 0)
    assert server_settings(secret="s" * 40, max_keys=3).max_keys == 3
