"""``python -m syncbridge client``: JSON lines in, messages out, against a real server."""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from syncbridge.protocol.messages import MessageType
from syncbridge.settings import iter_options
from syncbridge.tools.terminal import TerminalOptions, run_terminal

from ..conftest import SECRET, RunningServer, mint

BOUND = 10  # seconds; every test finishes far sooner
RUNBOOK_HEARTBEAT = '{"type":1,"timestamp":1707657600,"payload":{}}'


@attrs.define
class Terminal:
    """The terminal client running in-process: stdin, stdout and stderr as channels."""

    stdin: trio.MemorySendChannel[str]
    stdout: trio.MemoryReceiveChannel[str]
    stderr: trio.MemoryReceiveChannel[str]
    done: trio.Event = attrs.Factory(trio.Event)
    status: int | None = None
    errors: list[str] = attrs.Factory(list)

    async def type(self, line: str) -> None:
        await self.stdin.send(line + "\n")

    async def end_input(self) -> None:
        await self.stdin.aclose()

    async def read(self) -> dict[str, Any]:
        """The next message printed on stdout, decoded."""
        with trio.fail_after(BOUND):
            line = await self.stdout.receive()
        assert "\n" not in line
        message: dict[str, Any] = orjson.loads(line)
        return message

    def printed(self) -> list[dict[str, Any]]:
        """Everything printed on stdout and not read yet."""
        lines = []
        while True:
            try:
                lines.append(orjson.loads(self.stdout.receive_nowait()))
            except trio.WouldBlock:
                return lines

    async def wait_stderr(self, text: str) -> str:
        """The first stderr line containing ``text``."""
        with trio.fail_after(BOUND):
            async for line in self.stderr:
                self.errors.append(line)
                if text in line:
                    return line
        raise AssertionError(f"{text!r} not in stderr: {self.errors}")

    async def wait_exit(self) -> int:
        with trio.fail_after(BOUND):
            await self.done.wait()
        assert self.status is not None
        return self.status

    def all_stderr(self) -> list[str]:
        while True:
            try:
                self.errors.append(self.stderr.receive_nowait())
            except trio.WouldBlock:
                return self.errors


@asynccontextmanager
async def open_terminal(url: str, **options: Any) -> AsyncIterator[Terminal]:
    """Run the terminal client against ``url``; end its input on exit if still running."""
    stdin_send, stdin_receive = trio.open_memory_channel[str](math.inf)
    stdout_send, stdout_receive = trio.open_memory_channel[str](math.inf)
    stderr_send, stderr_receive = trio.open_memory_channel[str](math.inf)
    terminal = Terminal(stdin=stdin_send, stdout=stdout_receive, stderr=stderr_receive)

    async def run() -> None:
        terminal.status = await run_terminal(
            TerminalOptions(url=url, **options),
            stdin_receive,
            out=stdout_send.send_nowait,
            err=stderr_send.send_nowait,
        )
        terminal.done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield terminal
        stdin_send.close()
        with trio.fail_after(BOUND):
            await terminal.done.wait()


async def test_terminal_heartbeat_line_prints_heartbeat_ack(server: RunningServer) -> None:
    async with open_terminal(server.url) as terminal:
        await terminal.type(RUNBOOK_HEARTBEAT)
        ack = await terminal.read()
        await terminal.end_input()
        assert await terminal.wait_exit() == 0
    assert ack["type"] == MessageType.HEARTBEAT_ACK
    assert ack["payload"]["client_time"] is None
    assert isinstance(ack["payload"]["server_time"], int)


async def test_terminal_token_authenticates_and_update_is_acknowledged(
    server: RunningServer,
) -> None:
    token = server.token(user="op", device="console", session="ops")
    async with open_terminal(server.url, token=token) as terminal:
        auth = await terminal.read()
        await terminal.type('{"type":5,"payload":{"key":"theme","value":"dark"}}')
        update = await terminal.read()
    assert auth["type"] == MessageType.AUTH_SUCCESS
    assert auth["payload"]["session_id"] == "ops"
    assert auth["payload"]["device_id"] == "console"
    assert update["type"] == MessageType.STATE_UPDATE
    assert update["payload"]["key"] == "theme"
    assert update["payload"]["version"] == 1
    assert (await server.app.store.snapshot("ops")).state == {"theme": "dark"}


async def test_terminal_invalid_json_is_sent_and_server_error_printed(
    server: RunningServer,
) -> None:
    async with open_terminal(server.url) as terminal:
        await terminal.type("this is not json")
        error = await terminal.read()
        await terminal.type(RUNBOOK_HEARTBEAT)  # the socket stays open
        ack = await terminal.read()
    assert error["type"] == MessageType.ERROR
    assert error["payload"]["code"] == 400
    assert error["payload"]["error_code"] == "INVALID_MESSAGE"
    assert ack["type"] == MessageType.HEARTBEAT_ACK


async def test_terminal_end_of_input_prints_every_reply_before_exiting(
    server: RunningServer,
) -> None:
    async with open_terminal(server.url, verbose=True) as terminal:
        await terminal.type('{"type":1,"payload":{"client_time":1}}')
        await terminal.type("")  # blank lines are skipped, not sent
        await terminal.type("{broken")
        await terminal.type('{"type":1,"payload":{"client_time":3}}')
        await terminal.end_input()
        assert await terminal.wait_exit() == 0
        printed = terminal.printed()
        stderr = terminal.all_stderr()
    assert [m["type"] for m in printed] == [2, 6, 2]
    assert [printed[0]["payload"]["client_time"], printed[2]["payload"]["client_time"]] == [1, 3]
    assert "> {broken" in stderr
    assert "< HeartbeatAck" in stderr
    assert stderr[-1] == "* closed 1000"


async def test_terminal_server_close_prints_code_and_fails(server_factory: Any) -> None:
    strict = await server_factory(auth_timeout=0.2)
    async with open_terminal(strict.url) as terminal:
        line = await terminal.wait_stderr("connection closed by server")
        assert await terminal.wait_exit() == 1
    assert "4408" in line


async def test_terminal_server_shutdown_close_exits_0(server: RunningServer) -> None:
    async with open_terminal(server.url) as terminal:
        await terminal.type(RUNBOOK_HEARTBEAT)
        await terminal.read()  # connected
        server.stop.set()
        line = await terminal.wait_stderr("connection closed by server")
        assert await terminal.wait_exit() == 0
    assert "1001" in line


async def test_terminal_refused_token_prints_auth_failure_and_fails(
    server: RunningServer,
) -> None:
    token = mint(secret="some-other-secret-that-is-32-bytes-long")
    async with open_terminal(server.url, token=token) as terminal:
        failure = await terminal.read()
        assert await terminal.wait_exit() == 1
    assert failure["type"] == MessageType.AUTH_FAILURE
    assert failure["payload"]["code"] == 401
    assert any("authentication failed" in line for line in terminal.all_stderr())


async def test_terminal_keepalive_heartbeats_are_not_printed(server: RunningServer) -> None:
    async with open_terminal(server.url, verbose=True, heartbeat_interval=0.05) as terminal:
        await terminal.wait_stderr("> Heartbeat (keep-alive)")
        await terminal.type('{"type":1,"payload":{"client_time":"mine"}}')
        # Replies come in order, so an ack to the keep-alive would be printed first.
        first = await terminal.read()
    assert first["payload"]["client_time"] == "mine"


async def test_terminal_unreachable_server_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with open_terminal(f"ws://127.0.0.1:{port}/ws", connect_timeout=5) as terminal:
        line = await terminal.wait_stderr("syncbridge client:")
        assert await terminal.wait_exit() == 1
    assert f"cannot connect to ws://127.0.0.1:{port}/ws" in line


# -- as a process: the runbook's pipelines ------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """This environment without SyncBridge settings, plus ``extra``."""
    ours = {o.metadata["env"] for o in iter_options()} | {"SYNCBRIDGE_CONFIG"}
    return {**{k: v for k, v in os.environ.items() if k not in ours}, **extra}


async def run_client(*args: str, stdin: str, env: dict[str, str]) -> tuple[int, str, str]:
    with trio.fail_after(BOUND):
        done = await trio.run_process(
            [sys.executable, "-m", "syncbridge", "client", *args],
            stdin=stdin.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_terminal_runbook_echo_pipeline_prints_heartbeat_ack(server: RunningServer) -> None:
    status, out, err = await run_client(server.url, stdin=RUNBOOK_HEARTBEAT + "\n", env=child_env())
    assert status == 0, err
    [line] = out.splitlines()
    assert orjson.loads(line)["type"] == MessageType.HEARTBEAT_ACK


async def test_terminal_process_mints_token_from_jwt_secret(server: RunningServer) -> None:
    status, out, err = await run_client(
        server.url,
        "--user",
        "op",
        "--device",
        "console",
        "--session",
        "minted",
        "-v",
        stdin='{"type":5,"payload":{"key":"k","value":[1,2]}}',  # no final newline
        env=child_env(JWT_SECRET=SECRET),
    )
    assert status == 0, err
    auth, update = (orjson.loads(line) for line in out.splitlines())
    assert auth["type"] == MessageType.AUTH_SUCCESS
    assert auth["payload"]["session_id"] == "minted"
    assert update["payload"] == {"key": "k", "value": [1, 2], "operation": "SET", "version": 1}
    assert err.splitlines()[-1] == "* closed 1000"
