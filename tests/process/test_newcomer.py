"""A newcomer's first hour (issue 11): each mistake answers with one clear line, exit non-zero."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trio

from syncbridge import tryout
from syncbridge.auth import TokenAuthority
from syncbridge.client import open_client
from syncbridge.errors import ConfigError

from ..redis_harness import RedisServer
from .proc import COMMAND, LineReader, child_env, free_port, run_server


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_RUNTIME_DIR, so try-out files never meet a real server's."""
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


async def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> tuple[int, str, str]:
    """Run ``python -m syncbridge *args`` to completion: status, stdout, stderr."""
    with trio.fail_after(timeout):
        result = await trio.run_process(
            [*COMMAND, *args],
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- 1. port already in use --------------------------------------------------------------


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
async def test_newcomer_port_in_use_is_one_line(taken_port: int, workers: list[str]) -> None:
    # WORKERS > 1 needs Redis configured; the bind fails before Redis is contacted.
    env = {"JWT_SECRET": "x" * 40, "REDIS_ADDR": "127.0.0.1:1"} if workers else {}
    status, out, err = await run("--addr", f"127.0.0.1:{taken_port}", *workers, env=env)
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert "SERVER_ADDR" in line
    assert "already in use" in line
    assert str(taken_port) in line


async def test_newcomer_admin_port_in_use_is_one_line(taken_port: int) -> None:
    status, _, err = await run(
        "--addr", f"127.0.0.1:{free_port()}", "--admin-addr", f"127.0.0.1:{taken_port}"
    )
    assert status == 2
    assert "ADMIN_ADDR" in one_line(err)


# -- 2. Redis address mistakes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"REDIS_URL": "localhost:16399"}, "REDIS_ADDR"),  # the runbook's form, in the wrong var
        ({"REDIS_URL": "redis://127.0.0.1:99999/0"}, "65535"),
        ({"REDIS_ADDR": "redis://127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379/0"}, "http://"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/abc"}, "/abc"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0/1"}, "database number"),
        ({"REDIS_URL": "redis:///0"}, "no host"),
        ({"REDIS_ADDR": "localhost:0"}, "65535"),
    ],
)
async def test_newcomer_redis_address_mistake_is_one_line_naming_the_variable(
    env: dict[str, str], needle: str
) -> None:
    status, out, err = await run("--addr", "127.0.0.1:0", env=env)
    assert status == 2
    assert out == ""
    line = one_line(err)
    assert next(iter(env)) in line
    assert needle in line


async def test_newcomer_redis_url_error_never_shows_the_password() -> None:
    env = {"REDIS_URL": "redis://:hunter2-secret@127.0.0.1:6379/abc"}
    status, _, err = await run("--addr", "127.0.0.1:0", env=env)
    assert status == 2
    assert "hunter2" not in err
    assert "REDIS_URL" in one_line(err)


# -- 4. try-out mode, end to end -------------------------------------------------------------


def _operator_token(banner: list[str]) -> str:
    for previous, line in itertools.pairwise(banner):
        if "operator token" in previous:
            return line.strip()
    raise AssertionError("no operator token in banner:\n" + "\n".join(banner))


async def _get(port: int, path: str, token: str) -> tuple[int, bytes]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            response = bytearray()
            while chunk := await stream.receive_some(65536):
                response += chunk
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_newcomer_tryout_server_is_operable_without_restart(runtime_dir: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(runtime_dir)}
    async with run_server(env=env) as server:
        here = {**env, "SERVER_ADDR": f"127.0.0.1:{server.port}"}
        # The secret is shared through a private file, only with this user.
        shared = runtime_dir / "syncbridge" / f"tryout-{server.port}.json"
        assert shared.stat().st_mode & 0o777 == 0o600
        assert shared.parent.stat().st_mode & 0o777 == 0o700
        assert str(shared) in "\n".join(server.banner)
        # `token` mints with the running server's secret ...
        argv = ["token", "--user", "ops", "--device", "cli", "--session", "ops", "--role", "admin"]
        status, out, err = await run(*argv, env=here)
        assert status == 0, err
        assert "try-out server" in err
        status_code, body = await _get(server.port, "/metrics", out.strip())
        assert status_code == 200
        assert b"syncbridge_active_connections" in body
        # ... the banner's operator token works as printed ...
        status_code, _ = await _get(server.port, "/debug/tasks", _operator_token(server.banner))
        assert status_code == 200
        # ... `client --user` mints with it too ...
        argv = ["client", server.ws_url, "--user", "u", "--device", "d", "--session", "s"]
        status, out, err = await run(*argv, env=env)
        assert status == 0, err
        assert '"type":8' in out
        # ... and `check` passes its WebSocket steps.
        status, out, err = await run("check", env=here)
        assert status == 0, out + err
        assert out.splitlines()[-1] == "OK: all 8 steps passed"
        assert await server.stop() == 0
    assert not shared.exists()


async def test_newcomer_token_after_tryout_server_was_killed_says_it_is_gone(
    runtime_dir: Path,
) -> None:
    env = {"XDG_RUNTIME_DIR": str(runtime_dir)}
    async with run_server(env=env) as server:
        await server.stop(signal.SIGKILL)
    status, out, err = await run(
        "token", "--user", "u", "--device", "d", "--session", "s",
        env={**env, "SERVER_ADDR": f":{server.port}"},
    )  # fmt: skip
    assert status == 2
    assert out == ""
    assert "is gone" in one_line(err)


def test_newcomer_tryout_file_readable_by_others_is_refused(runtime_dir: Path) -> None:
    with tryout.shared_secret("s" * 48, 4242) as path:
        assert tryout.read_secret(4242) == "s" * 48
        path.chmod(0o644)
        with pytest.raises(ConfigError, match="only you can read"):
            tryout.read_secret(4242)
        path.chmod(0o600)
    assert not path.exists()


def test_newcomer_tryout_symlink_is_refused(runtime_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(orjson.dumps({"secret": "x", "pid": os.getpid()}).decode())
    elsewhere.chmod(0o600)
    directory = tryout.runtime_dir(create=True)
    (directory / "tryout-4243.json").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="refusing"):
        tryout.read_secret(4243)


def test_newcomer_token_from_tryout_secret_verifies(runtime_dir: Path) -> None:
    with tryout.shared_secret("t" * 48, 4244):
        secret = tryout.read_secret(4244)
    token, _ = TokenAuthority(secret).mint(
        user_id="u", device_id="d", session_id="s", ttl=60, now=0
    )
    assert TokenAuthority("t" * 48).verify(token, now=1).user_id == "u"


# -- 5. smaller ones ------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://localhost:8080/ws", "localhost:8080"])
async def test_newcomer_client_with_http_url_is_one_line(url: str) -> None:
    status, _, err = await run("client", url)
    assert status == 1
    line = one_line(err)
    assert "ws://" in line


async def test_newcomer_client_unreachable_is_one_line() -> None:
    status, _, err = await run("client", f"ws://127.0.0.1:{free_port()}/ws")
    assert status == 1
    assert "cannot connect" in one_line(err)


async def test_newcomer_rate_limit_word_says_it_is_a_rate() -> None:
    status, _, err = await run("--addr", "127.0.0.1:0", env={"RATE_LIMIT": "lots"})
    assert status == 2
    line = one_line(err)
    assert "RATE_LIMIT" in line
    assert "per second" in line
    assert "duration" not in line


async def test_newcomer_check_piped_into_head_has_no_broken_pipe() -> None:
    # `check | head -1`: the reader goes away after the first line.
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [*COMMAND, "check", "--url", f"http://127.0.0.1:{free_port()}"],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        first = await LineReader(process.stdout).readline()
        assert first is not None
        assert first.startswith("syncbridge check of")
        await process.stdout.aclose()
        err = bytearray()
        while chunk := await process.stderr.receive_some(65536):
            err += chunk
        status = await process.wait()
    assert status == 1  # the check ran to the end and failed: nothing listens there
    assert b"BrokenPipeError" not in err
    assert b"Traceback" not in err


async def test_newcomer_help_shows_durations_as_the_runbook_writes_them() -> None:
    status, out, _ = await run("--help")
    assert status == 0
    flat = " ".join(out.split())
    assert "TOKEN_TTL; default '1h'" in flat
    assert "PING_INTERVAL; default '30s'" in flat
    assert "SESSION_TTL; default '7d'" in flat
    assert "RATE_LIMIT; default '100'" in flat
    assert "3600" not in flat


# -- 5. the runbook's preamble on a README install ------------------------------------------


def _preamble_token_lines() -> str:
    from ..test_runbook import runbook_check, runbook_text

    commands = [c.text for c in runbook_check.extract_commands(runbook_text())]
    wanted = ("export ADMIN_TOKEN=", "export TOKEN=", ': "${ADMIN_TOKEN:?')
    lines = [next(c for c in commands if c.startswith(w)) for w in wanted]
    return "\n".join(lines) + '\necho "ADMIN_TOKEN=$ADMIN_TOKEN"'


async def _bash(script: str, env: dict[str, str]) -> tuple[int, str, str]:
    with trio.fail_after(30):
        result = await trio.run_process(
            ["bash", "-c", script],
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_newcomer_runbook_preamble_never_leaves_an_empty_admin_token(
    runtime_dir: Path,
) -> None:
    script = _preamble_token_lines()
    # A README install with nothing running: it stops, saying why.
    env = {"XDG_RUNTIME_DIR": str(runtime_dir)}
    status, out, err = await _bash(script, env)
    assert status != 0
    assert "ADMIN_TOKEN=" not in out
    assert "is empty" in err
    assert "JWT_SECRET is not set" in err
    # The same lines against a hand-started try-out server: both tokens minted.
    async with run_server(env=env) as server:
        here = {**env, "SERVER_ADDR": f"127.0.0.1:{server.port}"}
        status, out, err = await _bash(script, here)
        assert status == 0, err
        assert out.startswith("ADMIN_TOKEN=eyJ")


async def test_newcomer_tryout_with_workers_shares_the_supervisors_secret(
    runtime_dir: Path, redis_server: RedisServer
) -> None:
    env = {"XDG_RUNTIME_DIR": str(runtime_dir), "REDIS_URL": redis_server.url}
    async with run_server("--workers", "2", env=env) as server:
        here = {**env, "SERVER_ADDR": f"127.0.0.1:{server.port}"}
        status, out, err = await run(
            "token", "--user", "u", "--device", "d", "--session", "s", env=here
        )
        assert status == 0, err
        with trio.fail_after(10):
            # Either worker may take the connection: both verify with the shared secret.
            for device in ("a", "b", "c"):
                async with open_client(server.ws_url, heartbeat_interval=None) as client:
                    auth = await client.authenticate(out.strip(), device_name=device)
                    assert auth["session_id"] == "s"
        assert await server.stop() == 0
    assert not (runtime_dir / "syncbridge" / f"tryout-{server.port}.json").exists()
