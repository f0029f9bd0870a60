"""The command line: help, version, the token command and configuration errors."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import trio

import syncbridge
from syncbridge.auth import TokenAuthority
from syncbridge.cli import main
from syncbridge.settings import iter_options

from .proc import COMMAND, child_env, run_server

SECRET = "cli-test-secret-that-is-at-least-32-bytes"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SyncBridge setting (nor a try-out server's secret) leaks in from outside."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    for option in iter_options():
        monkeypatch.delenv(option.metadata["env"], raising=False)
    monkeypatch.delenv("SYNCBRIDGE_CONFIG", raising=False)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call main() in-process; an argparse exit counts as its status."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_cli_help_lists_every_setting_with_its_env_var(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_main(argv, capsys)
    assert status == 0
    words = out.split()
    for option in iter_options():
        env = option.metadata["env"]
        assert any(env in w for w in words), f"{env} missing from --help"
        flag = "--addr" if option.name == "addr" else "--" + option.name.replace("_", "-")
        assert flag in words, f"{flag} missing from --help"
    assert "--config" in words


def test_cli_token_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(["token", "--help"], capsys)
    assert status == 0
    for flag in ("--user", "--device", "--session", "--ttl", "--role"):
        assert flag in out


def test_cli_version_prints_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(["--version"], capsys)
    assert status == 0
    assert out.strip() == f"syncbridge {syncbridge.__version__}"


def test_cli_token_prints_one_verifiable_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    before = time.time()
    argv = ["token", "--user", "U", "--device", "D", "--session", "S", "--ttl", "15m"]
    status, out, err = run_main([*argv, "--role", "admin"], capsys)
    after = time.time()
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1
    claims = TokenAuthority(SECRET).verify(lines[0], now=after)
    assert (claims.user_id, claims.device_id, claims.session_id) == ("U", "D", "S")
    assert claims.roles == ("admin",)
    assert claims.is_admin
    assert int(before + 900) <= claims.expires_at <= after + 900


def test_cli_token_from_config_file_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sb.toml"
    config.write_text(f'jwt_secret = "{SECRET}"\n')
    argv = ["token", "--user", "U", "--device", "D", "--session", "S", "--config", str(config)]
    status, out, _ = run_main(argv, capsys)
    assert status == 0
    claims = TokenAuthority(SECRET).verify(out.strip(), now=time.time())
    assert claims.roles == ()


def test_cli_token_bad_ttl_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    argv = ["token", "--user", "U", "--device", "D", "--session", "S", "--ttl", "soon"]
    status, out, err = run_main(argv, capsys)
    assert status == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "--ttl" in err
    assert "soon" in err


def test_cli_token_without_secret_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run_main(["token", "--user", "U", "--device", "D", "--session", "S"], capsys)
    assert status == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "JWT_SECRET is not set" in err


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"SERVER_ADDR": "nonsense"}, "SERVER_ADDR"),
        ({"JWT_SECRET": "too-short"}, "JWT_SECRET"),
        ({"PING_INTERVAL": "-1"}, "PING_INTERVAL"),
        ({"OUTBOX_SIZE": "lots"}, "OUTBOX_SIZE"),
        ({"JWT_ALLOW_WEAK_SECRET": "maybe"}, "JWT_ALLOW_WEAK_SECRET"),
    ],
)
def test_cli_invalid_env_exits_2_naming_the_variable(
    env: dict[str, str],
    needle: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, out, err = run_main([], capsys)
    assert status == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert needle in lines[0]
    assert "Traceback" not in err


def test_cli_several_invalid_settings_reported_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "loud")
    monkeypatch.setenv("SERVER_ADDR", "nonsense")
    status, _, err = run_main([], capsys)
    assert status == 2
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert "LOG_LEVEL" in lines[0]
    assert "SERVER_ADDR" in lines[0]


def test_cli_invalid_flag_value_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(["--log-level", "loud"], capsys)
    assert status == 2
    assert len(err.splitlines()) == 1
    assert "LOG_LEVEL" in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("addr = [\n", "not valid TOML"),
        ('bogus_knob = 1\naddr = "127.0.0.1:0"\n', "bogus_knob"),
        ("[syncbridge]\nbogus_knob = 1\n", "bogus_knob"),
        ('[syncbridge]\nlog_level = "loud"\n', "LOG_LEVEL"),
    ],
)
def test_cli_invalid_config_file_exits_2_with_one_line(
    content: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    status, out, err = run_main(["--config", str(config)], capsys)
    assert status == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert needle in lines[0]


def test_cli_missing_config_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.toml"
    status, _, err = run_main(["--config", str(missing)], capsys)
    assert status == 2
    assert len(err.splitlines()) == 1
    assert str(missing) in err


def test_cli_secret_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(["--jwt-secret"], capsys)
    assert status == 2
    assert "environment" in err


async def test_cli_process_invalid_config_exit_status_is_2() -> None:
    with trio.fail_after(15):
        result = await trio.run_process(
            [*COMMAND, "--addr", "127.0.0.1:0"],
            env=child_env({"LOG_LEVEL": "loud"}),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "LOG_LEVEL" in lines[0]


async def test_cli_weak_secret_accepted_when_allowed() -> None:
    env = {"JWT_SECRET": "short-legacy-secret", "JWT_ALLOW_WEAK_SECRET": "1"}
    async with run_server(env=env) as server:
        assert any(line.startswith("  WebSocket  ws://") for line in server.banner)
        status = await server.stop()
    assert status == 0
    warnings = [line for line in server.stderr if "WARNING" in line]
    assert any("JWT_ALLOW_WEAK_SECRET" in line for line in warnings), server.stderr_text
    assert "Traceback" not in server.stderr_text
