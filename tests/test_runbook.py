"""docs/runbook.md: every command of its ```bash blocks works against a live SyncBridge.

Each command is matched to one fragment below (runbook_check.match_fragments), and is

- EXPECT: run with ``bash -c`` against a real ``python -m syncbridge`` on a free port,
  backed by a private Redis from tests/redis_harness.py, in the environment an operator
  has after the runbook's "Before you start" (JWT_SECRET, SERVER_ADDR, REDIS_ADDR,
  TOKEN, ADMIN_TOKEN). ``8080`` and ``6379`` in the command become the test's ports,
  and ``redis-cli``/``redis-server`` on PATH are the harness's binaries aimed at the
  private Redis (never the system's). It must exit 0 and print every regex given;
  ``export NAME=...`` lines print ``$NAME`` afterwards. FILES names files it must write.
- STREAMING: runs until interrupted (a server, MONITOR): started, awaited until its
  output matches, then stopped with SIGTERM.
- ALLOWLIST: cannot run in a test, for the reason given.

A command that matches no fragment fails the test, and so does a fragment that
matches no command. The settings table must be the one scripts/runbook_check.py
generates from Settings, so it lists every setting.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from syncbridge.auth import TokenAuthority
from syncbridge.client import open_client
from syncbridge.errors import CloseCode, RequestError
from syncbridge.settings import iter_options

from .process.proc import child_env, free_port, run_server
from .redis_harness import open_redis_server

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("runbook_check", ROOT / "scripts/runbook_check.py")
assert _spec is not None
assert _spec.loader is not None
runbook_check: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runbook_check)

SECRET = "runbook-test-secret-at-least-32-bytes-long"
COMMAND_TIMEOUT = 30.0
JWT = r"^eyJ[\w-]+\.[\w-]+\.[\w-]+$"
CHECK_OK = r"^OK: all 8 steps passed$"
# What the exercised commands use besides python and the harness's redis-cli/redis-server.
TOOLS = ("bash", "curl", "jq", "lsof", "ss", "ps", "paste", "xargs", "grep", "tee", "uname")
# Rewritten in every exercised command. The profile is shortened to keep the test fast.
REWRITES = ((r"\b8080\b", "<PORT>"), (r"\b6379\b", "<REDIS_PORT>"), (r"seconds=30", "seconds=0.5"))

EXPECT: dict[str, str | tuple[str, ...]] = {
    # Before you start
    "export SYNCBRIDGE_CONFIG=": r"^/etc/syncbridge/syncbridge\.toml$",
    "export ADMIN_TOKEN=": JWT,
    "export TOKEN=": JWT,
    ': "${ADMIN_TOKEN:?': (),
    # Quick diagnostics
    "python -m syncbridge check": CHECK_OK,
    "8080/health/details | jq .": (r'"status": "ok"', r'"backend": "redis"'),
    "redis-cli ping": r"^PONG$",
    '"client_time":1}}': r'"type":2,.*"client_time":1\b',
    # Cannot connect
    "ss -tlnp | grep 8080": r"LISTEN.*127\.0\.0\.1:<PORT>\b",
    "lsof -i :8080": r"\(LISTEN\)",
    "/health/live": (r"^HTTP/1\.1 200", r'"status":"alive"'),
    "curl -i http://localhost:8080/ws": (r"^HTTP/1\.1 426", r"upgrade required"),
    """echo '{"type":1}' |""": r'^\{"type":2,',
    "lsof -t -i :8080 -sTCP:LISTEN": r"^\d+$",
    "ps -o pid,args": r"python.* -m syncbridge",
    'echo "$SERVER_ADDR"': r"^127\.0\.0\.1:<PORT>$",
    "grep -A1 -- '--addr'": r"SERVER_ADDR",
    # Connection drops, task leaks
    "jq '.active_connections'": r"^\d+$",
    "connections_closed_total|slow_consumer": r"^syncbridge_slow_consumer_disconnects_total 0\.0$",
    "/debug/tasks | head -30": (r"^\d+ tasks$", r"connection\.read"),
    '.by_name["connection.read"]': r"^[1-9]\d*$",
    "jq -c '.connections[]": r'"session_id":"demo","device_id":"phone"',
    # Authentication fails
    '--token "$TOKEN" < /dev/null': r'^\{"type":8,.*"session_id":"demo"',
    '"verify_signature": False': r"'session_id': 'demo'",
    "fromtimestamp(1707657600": r"^2024-02-11 13:20:00\+00:00$",
    'print("signature ok")': r"^signature ok$",
    '"JWT_SECRET", "").encode()': r"^\d{2,} bytes$",
    "grep syncbridge_auth_failures_total": r"^# TYPE syncbridge_auth_failures_total counter$",
    "--session demo --ttl 1h": JWT,
    "export JWT_SECRET=": r"^[\w-]{64}$",
    "JWT_ALLOW_WEAK_SECRET=1 python -m syncbridge token": JWT,
    # Session not found
    '"type":3,': r'"type":4,.*"state_data":\{"theme":"dark"\}',
    "--scan --pattern 'session:*' | head -20": r"^session:\{demo\}",
    "HGETALL 'session:{demo}'": (r"^theme$", r'^"dark"$'),
    "HGETALL 'session:{demo}:meta'": (r"^version$", r"^updated_at$"),
    "TTL 'session:{demo}'": r"^[1-9]\d*$",
    "jq '.store'": (r'"backend": "redis"', r'"address": "127\.0\.0\.1:<REDIS_PORT>"'),
    # State not persisting
    '"correlation_id":"u1"}\' |': r'"type":5,.*"operation":"SET","version":\d+\}.*"u1"',
    "HGET 'session:{demo}' theme": r'^"dark"$',
    "LRANGE 'session:{demo}:history'": r'"key": ?"theme"',
    "redis-cli -h localhost -p 6379 ping": r"^PONG$",
    # Broadcast failing
    "/admin/sessions | jq .": r'"session_id": "demo"',
    "active_connections|authenticated_connections": r"^syncbridge_active_connections [1-9]",
    "ZRANGE 'session:{demo}:presence'": r"^phone\x1f",
    "PUBSUB CHANNELS": r"^session:\{demo\}:events$",
    "--user bob --device phone --session demo": r'^\{"type":8,.*"device_id":"phone"',
    '"value":"light"': r'"type":5,.*"value":"light"',
    # High latency
    "(update_seconds|update_store_seconds": r"^syncbridge_update_seconds_count [1-9]",
    "/debug/profile?seconds=30' >": (),
    "format=html' -o profile.html": (),
    "redis-cli --latency -i 1 --raw": r"^\d+ \d+ [\d.]+ \d+$",
    "redis-cli SLOWLOG LEN": r"^\d+$",
    "ps -o pid,stat,%cpu,rss,etime,args": r"python.* -m syncbridge",
    # Too many connections
    "ss -s": r"^TCP:",
    "ss -Htn state established": r"^[1-9]\d*$",
    "jq '{active_connections,": r'"active_connections": [1-9]',
    "ulimit -n": r"^(\d+|unlimited)$",
    "cat /proc/sys/fs/file-max": r"^\d+$",
    "grep 'open files'": r"^Max open files",
    'fds"; done': r"^\d+ \d+ fds$",
    # Invalid message format
    """echo '{"type":1,"timestamp":1707657600,""": r'^\{"type":2,',
    """echo '{"type":"1",""": (r'"code":400', r'"error_code":"INVALID_MESSAGE"', r'"field":"type"'),
    "echo 'not json'": r'"code":400,"message":"invalid JSON',
    "int(time.time())": r'^\{"type": 1, "timestamp": \d+, "payload": \{\}\}$',
    "grep syncbridge_errors_total": r'^syncbridge_errors_total\{code="INVALID_MESSAGE"\} [1-9]',
    # Large messages
    '"x" * 600000': r"^connection closed by server: 1009",
    '"x" * 400000': (r'^\{"type":5,.*"key":"b"', r'^\{"type":6,.*"code":413'),
    "HGET 'session:{scratch}:meta' bytes": r"^8\d{5}$",
    # Redis connection failed
    "INFO clients | grep connected_clients": r"^connected_clients:[1-9]",
    "ss -tlnp | grep 6379": r"LISTEN.*127\.0\.0\.1:<REDIS_PORT>\b",
    'export REDIS_ADDR="localhost:6379"': r"^localhost:<REDIS_PORT>$",
    "export REDIS_URL=": r"^redis://:secret@localhost:<REDIS_PORT>/0$",
    "SET syncbridge:runbook-test ok EX 60": r"^OK$",
    "GET syncbridge:runbook-test": r"^ok$",
    # Redis memory full
    "INFO memory": r"^maxmemory_policy:noeviction",
    "INFO stats": r"^evicted_keys:0",
    "CONFIG GET maxmemory-policy": r"^noeviction$",
    "MEMORY USAGE 'session:{demo}'": r"^[1-9]\d*$",
    "CONFIG SET maxmemory 2gb": r"^OK$",
    "CONFIG SET maxmemory-policy noeviction": r"^OK$",
    "ZCARD 'session:{scratch}:presence'": r"^0$",
    "--pattern 'session:{scratch}*' | xargs -r redis-cli DEL": r"^[1-9]\d*$",
    # Tests failing
    "curl -sf http://localhost:8080/health/ready": r'"status":"ready"',
    "python -m syncbridge check --timeout 2": CHECK_OK,
    # Getting help
    "python -m syncbridge --version": r"^syncbridge \d",
    "check 2>&1 | tee check-output.log": CHECK_OK,
    "/debug/tasks > tasks.txt": (),
    "/metrics > metrics.txt": (),
    "uname -a": r"\S",
    "python --version": r"^Python 3\.",
    "python -m pip show syncbridge": r"^Name: syncbridge$",
    "redis-server --version": r"v=\d",
    "INFO server": r"^redis_version:\d",
    # Emergency procedures
    "-w '%{http_code}\\n'": r"^200$",
    "CONFIG GET dir": r"^dir$",
    "INFO persistence": r"^rdb_last_bgsave_status:ok",
    "redis-cli --rdb": r"Transfer finished with success",
    "CONFIG SET appendonly yes": r"^OK$",
    # Appendix
    "client -v ws://localhost:8080/ws --user alice": r"^< AuthSuccess$",
    '"type":12,': r'"type":12,.*"device_id":"phone"',
    "/admin/connections | jq .": r'"device_id": "phone"',
    "seconds=30' | head -40": r"Samples:",
    "python -m syncbridge --help": r"SERVER_ADDR",
}

FILES: dict[str, tuple[str, str]] = {
    "/debug/profile?seconds=30' >": ("profile.txt", r"Samples:"),
    "format=html' -o profile.html": ("profile.html", r"(?i)<html"),
    "check 2>&1 | tee check-output.log": ("check-output.log", CHECK_OK),
    "/debug/tasks > tasks.txt": ("tasks.txt", r"connection\.read"),
    "/metrics > metrics.txt": ("metrics.txt", r"^syncbridge_active_connections "),
}

# Commands that run until interrupted: the text that shows they work.
STREAMING: dict[str, str] = {
    "python -m syncbridge": r"is serving \(store: redis",
    "LOG_LEVEL=debug python -m syncbridge": r"is serving \(store: redis",
    "RATE_LIMIT=1000 RATE_BURST=2000": r"is serving \(store: redis",
    "redis-cli MONITOR": r"^OK$",
    "redis-cli SUBSCRIBE 'session:{demo}:events'": r"^subscribe$",
}

ALLOWLIST: dict[str, str] = {
    # The host's installation: the test sets the same variables itself.
    "set -a; . /etc/syncbridge/env; set +a": "reads the installed service's secrets file",
    # systemd and journald on the host, with the unit installed.
    "systemctl restart harmonyflow-session": "restarts the installed service",
    "systemctl status harmonyflow-session": "needs systemd and the installed unit",
    "systemctl show harmonyflow-session": "needs systemd and the installed unit",
    "systemctl start redis-server": "starts the host's Redis",
    "systemctl stop harmonyflow-session redis-server": "stops the host's services",
    "journalctl -u harmonyflow-session -f": "follows the journal until interrupted",
    "journalctl -u harmonyflow-session --since": "needs the service's journal",
    "journalctl -u harmonyflow-session -n 100": "needs the service's journal",
    "journalctl -u harmonyflow-session -n 50": "needs the service's journal",
    # Interactive or host-wide.
    "htop": "interactive",
    "iostat -x 1": "runs until interrupted (and sysstat may be absent)",
    "ulimit -n 65535": "raising the hard limit needs root; it only affects that shell",
    "redis-server /etc/redis/redis-syncbridge.conf": "starts a Redis on the host's port 6379",
    "docker run": "needs docker, and binds the host's port 6379",
    # Paths of the host's Redis; the restore procedure is destructive.
    "ls -la /var/lib/redis/backup/": "the host's backup directory",
    "mv /var/lib/redis/appendonlydir": "destructive: moves the host's AOF",
    "cp /var/lib/redis/backup/": "destructive: overwrites the host's dump.rdb",
    "chown redis:redis": "needs root and the host's Redis files",
    "redis-server /etc/redis/redis.conf --appendonly no": "restarts the host's Redis",
}


def match_commands(commands: list[Any]) -> tuple[dict[str, str], list[str]]:
    """Each distinct command's fragment, and the problems found (see match_fragments)."""
    tables = {"EXPECT": EXPECT, "STREAMING": STREAMING, "ALLOWLIST": ALLOWLIST}
    chosen, problems = runbook_check.match_fragments(commands, tables)
    problems += [f"FILES has {f!r}, which is not in EXPECT" for f in FILES if f not in EXPECT]
    return chosen, problems


def runbook_text() -> str:
    return runbook_check.RUNBOOK.read_text()


def test_runbook_every_command_is_exercised_or_allowlisted() -> None:
    commands = runbook_check.extract_commands(runbook_text())
    assert len(commands) > 100
    chosen, problems = match_commands(commands)
    assert not problems, "\n".join(problems)
    exercised = [c for c in chosen.values() if c not in ALLOWLIST]
    assert len(exercised) > 4 * len(ALLOWLIST)


def test_runbook_settings_table_lists_every_setting() -> None:
    text = runbook_text()
    assert runbook_check.replace_table(text) == text, (
        "settings table out of date: python scripts/runbook_check.py --write"
    )
    table = text[text.index(runbook_check.BEGIN) : text.index(runbook_check.END)]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.M)
    assert rows == [o.metadata["env"] for o in iter_options()] + ["SYNCBRIDGE_CONFIG"]


def test_runbook_check_script_rewrites_a_stale_table(tmp_path: Path) -> None:
    copy = tmp_path / "runbook.md"
    copy.write_text(re.sub(r"^\| `REDIS_DB` \|.*\n", "", runbook_text(), flags=re.M))
    assert runbook_check.main(["--runbook", str(copy)]) == 1
    assert runbook_check.main(["--runbook", str(copy), "--write"]) == 0
    assert copy.read_text() == runbook_text()
    assert runbook_check.main(["--runbook", str(copy)]) == 0


def test_runbook_extract_commands_joins_continuations_and_drops_comments() -> None:
    text = (
        "```bash\n# heading\nredis-cli ping  # PONG\n\n  curl -s \\\n  http://x | jq .\n```\n"
        "```json\n{}\n```\n"
        "1. step\n\n   ```bash\n   echo '#not a comment'\n   ```\n"
    )
    commands = runbook_check.extract_commands(text)
    assert [(c.text, c.line) for c in commands] == [
        ("redis-cli ping", 3),
        ("curl -s http://x | jq .", 5),
        ("echo '#not a comment'", 14),
    ]


def test_runbook_lists_every_close_code_and_error_code() -> None:
    text = runbook_text()
    for code in CloseCode:
        assert re.search(rf"^\| {int(code)} \|", text, re.M), f"close code {int(code)} missing"
    # Class-level codes (LimitExceeded sets its own per instance, found below).
    codes = {
        c.__dict__["error_code"] for c in _subclasses(RequestError) if "error_code" in c.__dict__
    }
    for path in (ROOT / "syncbridge").rglob("*.py"):
        codes |= set(re.findall(r'error_code="([A-Z_]+)"', path.read_text()))
    assert {"TOO_MANY_DEVICES", "STATE_TOO_LARGE", "TOO_MANY_KEYS"} <= codes
    for code in codes:
        assert f"`{code}`" in text, f"error code {code} missing"


def _subclasses(cls: type) -> list[type]:
    return [s for c in cls.__subclasses__() for s in (c, *_subclasses(c))]


def _anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_runbook_links_resolve() -> None:
    text = runbook_text()
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", text):
        path = (runbook_check.RUNBOOK.parent / target) if target else runbook_check.RUNBOOK
        assert path.exists(), f"link to missing {target}"
        if anchor:
            assert anchor in _anchors(path.read_text()), f"no #{anchor} in {path.name}"


# --------------------------------------------------------------------------- live run


def _regexes(value: str | tuple[str, ...], ports: dict[str, str]) -> list[str]:
    items = (value,) if isinstance(value, str) else value
    return [item.replace("<PORT>", ports["<PORT>"]).replace("<REDIS_PORT>", ports["<REDIS_PORT>"])
            for item in items]  # fmt: skip


def _rewrite(command: str, ports: dict[str, str]) -> str:
    for pattern, name in REWRITES:
        command = re.sub(pattern, ports.get(name, name), command)
    return command


def _shims(directory: Path, cli: Path, server: Path, redis_port: int) -> Path:
    directory.mkdir()
    for name, line in (
        ("redis-cli", f'exec "{cli}" -p {redis_port} "$@"'),
        ("redis-server", f'exec "{server}" "$@"'),
    ):
        path = directory / name
        path.write_text(f"#!/bin/sh\n{line}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


async def _kill_group(process: trio.Process) -> None:
    os.killpg(process.pid, signal.SIGKILL)


async def _run(command: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    export = re.match(r"^export ([A-Za-z_]\w*)=", command)
    script = f'{command}; printf "%s\\n" "${export[1]}"' if export else command
    with trio.fail_after(COMMAND_TIMEOUT):
        result = await trio.run_process(
            ["bash", "-c", script],
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            cwd=cwd,
            start_new_session=True,
            deliver_cancel=_kill_group,
        )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


async def _stream(command: str, env: dict[str, str], cwd: Path, wanted: str) -> str | None:
    env = {**env, "SERVER_ADDR": f"127.0.0.1:{free_port()}"}  # never the test server's port
    process = await trio.lowlevel.open_process(
        ["bash", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    seen = b""
    try:
        assert process.stdout is not None
        with trio.move_on_after(COMMAND_TIMEOUT):
            while not re.search(wanted, seen.decode(errors="replace"), re.M):
                chunk = await process.stdout.receive_some()
                if not chunk:
                    break
                seen += chunk
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
        with trio.move_on_after(15, shield=True):
            await process.wait()
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
    if re.search(wanted, seen.decode(errors="replace"), re.M):
        return None
    return f"never printed {wanted!r}; output:\n{seen.decode(errors='replace')[-2000:]}"


async def _exercise(
    text: str, fragment: str, env: dict[str, str], work: Path, ports: dict[str, str]
) -> list[str]:
    """Run one command as its table says; what went wrong, if anything."""
    command = _rewrite(text, ports)
    if fragment in STREAMING:
        problem = await _stream(command, env, work, STREAMING[fragment])
        return [problem] if problem else []
    status, output = await _run(command, env, work)
    problems = []
    missing = [r for r in _regexes(EXPECT[fragment], ports) if not re.search(r, output, re.M)]
    if status != 0 or missing:
        problems.append(
            f"ran: {command}\n  exit {status}, missing {missing}\n  output: {output[-1500:]}"
        )
    if fragment in FILES:
        name, regex = FILES[fragment]
        written = work / name
        content = written.read_text(errors="replace") if written.exists() else ""
        if not re.search(regex, content, re.M):
            problems.append(f"{name} lacks {regex!r}")
    return problems


@pytest.mark.slow
async def test_runbook_commands_work_against_a_live_server(tmp_path: Path) -> None:
    commands = runbook_check.extract_commands(runbook_text())
    chosen, problems = match_commands(commands)
    assert not problems, "\n".join(problems)
    missing_tools = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing_tools, f"the runbook's commands need {missing_tools} installed"
    authority = TokenAuthority(SECRET)

    def mint(user: str, device: str, session: str, *roles: str) -> str:
        token, _ = authority.mint(
            user_id=user, device_id=device, session_id=session, roles=roles, ttl=600,
            now=time.time(),
        )  # fmt: skip
        return token

    work = tmp_path / "cwd"
    work.mkdir()
    failures: list[str] = []
    async with open_redis_server(tmp_path / "redis") as redis:
        server_env = {"JWT_SECRET": SECRET, "REDIS_ADDR": redis.addr}
        async with run_server(env=server_env) as server:
            ports = {"<PORT>": str(server.port), "<REDIS_PORT>": str(redis.port)}
            shims = _shims(tmp_path / "bin", redis.cli_path, redis.server_path, redis.port)
            path = os.pathsep.join(
                [str(shims), str(Path(sys.executable).parent), os.environ["PATH"]]
            )
            env = child_env({
                **server_env,
                "PATH": path,
                "SERVER_ADDR": f"127.0.0.1:{server.port}",
                "TOKEN": mint("alice", "laptop", "demo"),
                "ADMIN_TOKEN": mint("ops", "cli", "ops", "admin"),
            })  # fmt: skip
            # bob's phone stays online in session demo throughout, as a live device.
            async with open_client(server.ws_url, token=mint("bob", "phone", "demo")) as bob:
                await bob.update("theme", "dark")
                for text, fragment in chosen.items():
                    if fragment in ALLOWLIST:
                        continue
                    line = next(c.line for c in commands if c.text == text)
                    for problem in await _exercise(text, fragment, env, work, ports):
                        failures.append(f"runbook line {line}: {text}\n  {problem}")
                assert bob.closed is None, "a runbook command disconnected a live device"
    assert not failures, f"{len(failures)} runbook commands failed:\n\n" + "\n\n".join(failures)
