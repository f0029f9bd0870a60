"""Running ``python -m syncbridge`` as a real child process, for the process tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from syncbridge.settings import iter_options

BANNER_TIMEOUT = 15.0
COMMAND = (sys.executable, "-m", "syncbridge")


def free_port() -> int:
    """A port nothing listens on right now (bound to 127.0.0.1:0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any SyncBridge setting, plus ``env``."""
    ours = {o.metadata["env"] for o in iter_options()} | {"SYNCBRIDGE_CONFIG"}
    base = {k: v for k, v in os.environ.items() if k not in ours}
    return {**base, **(env or {})}


class LineReader:
    """Lines (without the newline) from a byte stream; None at end of stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def readline(self) -> str | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.decode()
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                if not self._buffer:
                    return None
                line = bytes(self._buffer)
                self._buffer.clear()
                return line.decode()
            self._buffer += chunk


@attrs.define
class ServerProcess:
    """A started server process: its banner, its stderr lines and how to stop it."""

    process: trio.Process
    port: int
    banner: list[str] = attrs.Factory(list)
    stderr: list[str] = attrs.Factory(list)
    stderr_closed: trio.Event = attrs.Factory(trio.Event)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def stderr_text(self) -> str:
        return "\n".join(self.stderr)

    def banner_token(self) -> str:
        """The try-out token the banner prints when JWT_SECRET is unset."""
        for previous, line in zip(self.banner, self.banner[1:], strict=False):
            if "try-out token" in previous:
                return line.strip()
        raise AssertionError("no try-out token in banner:\n" + "\n".join(self.banner))

    async def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 10.0) -> int:
        """Send ``sig``; return the exit status once the process and its stderr have ended."""
        self.process.send_signal(sig)
        with trio.fail_after(timeout):
            status = await self.process.wait()
            await self.stderr_closed.wait()
        return status

    async def _collect_stderr(self) -> None:
        assert self.process.stderr is not None
        reader = LineReader(self.process.stderr)
        try:
            while (line := await reader.readline()) is not None:
                self.stderr.append(line)
        finally:
            self.stderr_closed.set()

    async def _read_banner(self, stdout: LineReader) -> None:
        # The banner is printed (and flushed) only once the socket is bound, so
        # its last line ("  Try ...") is the readiness signal.
        while (line := await stdout.readline()) is not None:
            self.banner.append(line)
            if line.startswith("  Try "):
                return
        with trio.move_on_after(5):
            await self.stderr_closed.wait()
        raise AssertionError(
            f"server exited before its banner; stdout={self.banner!r}\n" + self.stderr_text
        )


async def _drain(reader: LineReader) -> None:
    while await reader.readline() is not None:
        pass


@asynccontextmanager
async def run_server(
    *args: str, env: Mapping[str, str] | None = None, port: int | None = None
) -> AsyncIterator[ServerProcess]:
    """Start ``python -m syncbridge --addr 127.0.0.1:<port> *args``; yield once it serves.

    ``port`` defaults to a free one (give the previous one to restart a server
    where its clients expect it). The process is killed on exit if the test has
    not stopped it.
    """
    port = port or free_port()
    process = await trio.lowlevel.open_process(
        [*COMMAND, "--addr", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(env),
    )
    try:
        async with trio.open_nursery() as nursery:
            server = ServerProcess(process=process, port=port)
            nursery.start_soon(server._collect_stderr)
            assert process.stdout is not None
            stdout = LineReader(process.stdout)
            with trio.fail_after(BANNER_TIMEOUT):
                await server._read_banner(stdout)
            nursery.start_soon(_drain, stdout)
            try:
                yield server
            finally:
                if process.returncode is None:
                    process.kill()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5, shield=True):
            await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def http_get(
    port: int, path: str, *, timeout: float = 5.0, token: str | None = None
) -> tuple[int, bytes]:
    """GET ``path`` from 127.0.0.1:``port`` with a hand-written HTTP/1.1 request."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    ).encode()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            response = bytearray()
            while chunk := await stream.receive_some(65536):
                response += chunk
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode()
    return int(status_line.split(" ")[1]), body


async def http_get_json(port: int, path: str, *, token: str | None = None) -> tuple[int, Any]:
    """GET ``path`` (with a Bearer ``token`` if given) and decode its JSON body."""
    status, body = await http_get(port, path, token=token)
    return status, orjson.loads(body)
