"""WORKERS > 1: several processes on one port, one service through Redis."""

from __future__ import annotations

import signal
import subprocess
import sys

import trio
import trio.testing

from syncbridge.client import open_client
from syncbridge.protocol.messages import MessageType

from ..conftest import SECRET, mint
from ..redis_harness import RedisServer
from .proc import http_get_json, run_server

BOUND = 30


async def test_workers_share_the_port_and_the_sessions(redis_server: RedisServer) -> None:
    env = {"JWT_SECRET": SECRET, "REDIS_URL": redis_server.url, "PING_INTERVAL": "0.2s"}
    with trio.fail_after(BOUND):
        async with run_server("--workers", "3", env=env) as server:
            assert any("3 workers" in line for line in server.banner)
            # Many devices of one session land on different workers; every one
            # sees the others' updates, so the workers act as one service.
            tokens = [mint(device=f"d{i}", session="w") for i in range(6)]
            async with trio.open_nursery() as nursery:
                clients = []
                for token in tokens:
                    clients.append(await nursery.start(_client, server.ws_url, token))
                versions = [await c.update(f"k{i}", i) for i, c in enumerate(clients)]
                assert sorted(versions) == list(range(1, 7))
                for i, c in enumerate(clients):
                    seen = set()
                    while len(seen) < 5:
                        push = await c.wait_for(MessageType.STATE_UPDATE)
                        seen.add(push["device_id"])
                    assert f"d{i}" not in seen
                snapshot = await clients[0].snapshot()
                assert snapshot["state_data"] == {f"k{i}": i for i in range(6)}
                nursery.cancel_scope.cancel()
            ops = mint(user="ops", device="cli", session="ops", roles=("metrics",))
            status, health = await http_get_json(server.port, "/health/details", token=ops)
            assert status == 200
            assert health["store"]["backend"] == "redis"
            assert await server.stop(signal.SIGTERM, timeout=20) == 0
            workers = [line for line in server.stderr if "worker" in line and "stopped" in line]
            assert len(workers) == 3
            assert all("status 0" in line for line in workers)


async def _client(url: str, token: str, *, task_status: trio.TaskStatus[object]) -> None:
    async with open_client(url, token=token) as client:
        task_status.started(client)
        await trio.sleep_forever()


def test_workers_need_redis() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "syncbridge", "--workers", "2", "--addr", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "WORKERS=2 needs Redis" in result.stderr


def _two_free_ports() -> int:
    """A port p with p + 1 also free (for two workers' admin addresses)."""
    import socket

    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two consecutive free ports")


async def test_each_worker_serves_operator_routes_on_its_own_admin_port(
    redis_server: RedisServer,
) -> None:
    admin = _two_free_ports()
    env = {"JWT_SECRET": SECRET, "REDIS_URL": redis_server.url, "PING_INTERVAL": "0.2s"}
    token = mint(user="ops", device="cli", session="ops", roles=("admin",))
    with trio.fail_after(BOUND):
        async with run_server(
            "--workers", "2", "--admin-addr", f"127.0.0.1:{admin}", env=env
        ) as server:
            for port in (admin, admin + 1):
                with trio.fail_after(10):
                    while True:  # each worker binds its admin port once it has started
                        try:
                            status, body = await _admin_get(port, "/metrics", token)
                            break
                        except OSError:
                            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert status == 200
                assert b"syncbridge_active_connections" in body
            assert await server.stop(signal.SIGTERM, timeout=20) == 0


async def _admin_get(port: int, path: str, token: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
