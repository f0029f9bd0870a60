"""The container path (Dockerfile, compose.yaml) follows the settings exactly.

The static checks always run. Building and running the image is opt-in
(``SYNCBRIDGE_TEST_CONTAINERS=docker`` or ``=podman``): on the machines this
suite runs on, podman installs from Debian but cannot start a container (crun:
``setrlimit RLIMIT_NOFILE``/``RLIMIT_NPROC`` not permitted, cgroups in hybrid
mode) and Docker Hub (registry-1.docker.io) does not resolve.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import trio
import yaml

from syncbridge.client import open_client
from syncbridge.settings import Settings, iter_options, load_settings, parse_duration

from .conftest import SECRET, mint
from .process.proc import LineReader, free_port, http_get

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
REDIS_FRAGMENT = ROOT / "config" / "redis-syncbridge.conf"
SETTING_NAMES = {a.metadata["env"] for a in iter_options()}
#: What a user puts in .env (compose.yaml requires both).
DOT_ENV = {"JWT_SECRET": "x" * 48, "REDIS_PASSWORD": "p" * 24}
RUNTIME_ENV = "SYNCBRIDGE_TEST_CONTAINERS"


# ------------------------------------------------------------------ reading the files


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines)
        if word and not word.startswith("#")
    ]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::([?-])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""

    def replace(match: re.Match[str]) -> str:
        name, kind, word = match.groups()
        if name is None:
            return "$"
        value = env.get(name, "")
        if not value and kind == "?":
            raise LookupError(f"{name}: {word}")
        return value or (word if kind == "-" else "")

    return _VARIABLE.sub(replace, text)


def compose(env: dict[str, str]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return loaded


def raw_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def settings_of(environ: dict[str, str]) -> Settings:
    return load_settings(environ=environ)


# ------------------------------------------------------------------ static checks


def test_container_dockerfile_sets_only_settings() -> None:
    env = dockerfile_env()
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
    settings = settings_of(env)
    instructions = dict(dockerfile_instructions())  # the last of each
    assert instructions["FROM"] == "python:3.11-slim"
    assert instructions["EXPOSE"] == str(settings.port) == "8080"
    assert instructions["USER"] not in {"root", "0"}
    assert instructions["CMD"] == '["python", "-m", "syncbridge"]'
    assert "/health/live" in instructions["HEALTHCHECK"]
    assert "SERVER_ADDR" in instructions["HEALTHCHECK"]  # probes the port it serves on
    runs = [args for name, args in dockerfile_instructions() if name == "RUN"]
    assert any(re.search(r"\bpip install\b.* /src\b", run) for run in runs)


def test_container_compose_sets_only_settings() -> None:
    service = compose(DOT_ENV)["services"]["syncbridge"]
    env = {name: str(value) for name, value in service["environment"].items()}
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
    settings = settings_of(env)  # every value is valid, too
    assert settings.jwt_secret == DOT_ENV["JWT_SECRET"]
    assert settings.redis_password == DOT_ENV["REDIS_PASSWORD"]
    # The Redis it names is the compose service, on Redis's port.
    host, _, port = settings.redis_addr.rpartition(":")
    assert host in compose(DOT_ENV)["services"]
    assert port == "6379"
    # The published port is the one SyncBridge listens on, the one the image exposes.
    assert service["ports"] == [f"{settings.port}:{settings.port}"]
    assert settings.port == settings_of(dockerfile_env()).port
    # docker compose stop waits for the drain.
    assert parse_duration(service["stop_grace_period"]) > settings.shutdown_timeout


def test_container_compose_requires_both_secrets() -> None:
    raw = raw_compose()["services"]["syncbridge"]["environment"]
    assert raw["JWT_SECRET"].startswith("${JWT_SECRET:?")
    assert raw["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    for missing in DOT_ENV:
        partial = {k: v for k, v in DOT_ENV.items() if k != missing}
        with pytest.raises(LookupError, match=missing):
            compose(partial)


def test_container_compose_mounts_the_redis_fragment() -> None:
    redis = compose(DOT_ENV)["services"]["redis"]
    mounts = [volume.split(":") for volume in redis["volumes"]]
    fragment = [(target, mode) for source, target, *mode in mounts if source.startswith("./")]
    assert len(fragment) == 1
    source = next(s for s, *_ in mounts if s.startswith("./"))
    assert (ROOT / source).resolve() == REDIS_FRAGMENT
    target, mode = fragment[0]
    assert mode == ["ro"]
    # redis-server runs with the mounted file as its configuration ...
    assert redis["command"][:2] == ["redis-server", target]
    assert PurePosixPath(target).name == REDIS_FRAGMENT.name
    # ... and the password SyncBridge is given.
    password = redis["command"][redis["command"].index("--requirepass") + 1]
    assert password == DOT_ENV["REDIS_PASSWORD"]
    depends = compose(DOT_ENV)["services"]["syncbridge"]["depends_on"]
    assert depends == {"redis": {"condition": "service_healthy"}}


# ------------------------------------------------------------------ build and run


NO_RUNTIME = (
    f"building and running the image is opt-in: set {RUNTIME_ENV}=docker (or podman) where "
    "that runtime can pull python:3.11-slim and run containers. Here podman 4.3.1 installs "
    "(apt-get install podman) but crun cannot start a container (setrlimit not permitted, "
    "cgroups in hybrid mode), registry-1.docker.io does not resolve, and docker has no daemon"
)


async def _run(*argv: str, timeout: float = 60.0) -> str:
    with trio.fail_after(timeout):
        result = await trio.run_process(
            list(argv), capture_stdout=True, stderr=subprocess.STDOUT, check=False
        )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, f"{' '.join(argv)}:\n{output}"
    return output.strip()


@pytest.mark.container
@pytest.mark.skipif(not os.environ.get(RUNTIME_ENV), reason=NO_RUNTIME)
async def test_container_image_builds_serves_and_drains() -> None:
    runtime = os.environ[RUNTIME_ENV]
    image = "syncbridge:test"
    await _run(runtime, "build", "-t", image, str(ROOT), timeout=900)
    port = free_port()
    container = await _run(
        runtime, "run", "-d", "-p", f"127.0.0.1:{port}:8080", "-e", f"JWT_SECRET={SECRET}", image
    )
    try:
        user = await _run(runtime, "exec", container, "id", "-u")
        assert user != "0"
        with trio.fail_after(60):
            logs = await trio.lowlevel.open_process(
                [runtime, "logs", "-f", container], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert logs.stdout is not None
            reader = LineReader(logs.stdout)
            while (line := await reader.readline()) is not None and "is serving" not in line:
                pass
            logs.kill()
            await logs.wait()
            status, body = await http_get(port, "/health/live")
            assert status == 200, body
            async with open_client(f"ws://127.0.0.1:{port}/ws", token=mint()) as client:
                assert await client.update("from", "a container") == 1
        await _run(runtime, "stop", "-t", "20", container, timeout=30)
        state = await _run(runtime, "inspect", "-f", "{{.State.ExitCode}}", container)
        assert state == "0"  # SIGTERM drained and exited cleanly
    finally:
        with trio.CancelScope(shield=True):
            await trio.run_process([runtime, "rm", "-f", container], check=False)
