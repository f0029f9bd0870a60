"""load_settings: defaults, env, TOML, overrides; one-line errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncbridge.errors import ConfigError
from syncbridge.settings import MIN_SECRET_BYTES, iter_options, load_settings, parse_duration

STRONG = "s" * MIN_SECRET_BYTES


def config_error(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_settings_defaults() -> None:
    s = load_settings(environ={})
    assert s.addr == ":8080"
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert s.token_ttl == 3600.0
    assert (s.log_level, s.log_format) == ("info", "text")
    assert s.max_message_bytes == 512 * 1024
    assert (s.auth_timeout, s.liveness_timeout, s.ping_interval) == (30.0, 60.0, 30.0)
    assert s.session_ttl == 7 * 86400.0
    assert s.allowed_origins == ()
    assert s.jwt_allow_weak_secret is False
    assert s.rate_burst == 200
    assert s.max_devices_per_session == 32


def test_settings_explicit_environ_ignores_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert load_settings(environ={}).log_level == "info"
    assert load_settings().log_level == "debug"


def test_settings_every_option_has_env_var_and_help() -> None:
    options = iter_options()
    names = [o.metadata["env"] for o in options]
    assert {"SERVER_ADDR", "JWT_SECRET", "LOG_LEVEL", "TOKEN_TTL"} <= set(names)
    assert len(names) == len(set(names))
    assert all(o.metadata["help"] for o in options)
    assert "secret_is_ephemeral" not in {o.name for o in options}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900.0), ("250ms", 0.25), ("7d", 604800.0), ("30s", 30.0), ("2h", 7200.0),
     ("45", 45.0), ("1.5s", 1.5), (" 10 s ", 10.0)],
)  # fmt: skip
def test_settings_duration_env_parsing(text: str, seconds: float) -> None:
    assert load_settings(environ={"TOKEN_TTL": text}).token_ttl == seconds
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5s", "0", "0ms", "5 minutes", "1e3", ""])
def test_settings_duration_invalid_names_variable(text: str) -> None:
    message = config_error(environ={"AUTH_TIMEOUT": text})
    assert "AUTH_TIMEOUT" in message


def test_settings_durations_and_ints_from_env() -> None:
    s = load_settings(
        environ={
            "SESSION_TTL": "7d",
            "PING_INTERVAL": "250ms",
            "SLOW_CONSUMER_TIMEOUT": "2",
            "MAX_STATE_BYTES": "2_000_000",
            "MAX_KEYS": " 500 ",
            "OUTBOX_SIZE": "16",
        }
    )
    assert (s.session_ttl, s.ping_interval, s.slow_consumer_timeout) == (604800.0, 0.25, 2.0)
    assert (s.max_state_bytes, s.max_keys, s.outbox_size) == (2_000_000, 500, 16)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("YES", True), ("on", True),
     ("0", False), ("false", False), ("No", False), ("off", False), ("", False)],
)  # fmt: skip
def test_settings_bool_env_parsing(text: str, value: bool) -> None:
    assert load_settings(environ={"JWT_ALLOW_WEAK_SECRET": text}).jwt_allow_weak_secret is value


def test_settings_allowed_origins_comma_list() -> None:
    s = load_settings(environ={"ALLOWED_ORIGINS": "https://a.example, https://b.example,,"})
    assert s.allowed_origins == ("https://a.example", "https://b.example")


def test_settings_overrides_beat_env() -> None:
    s = load_settings(
        environ={"SERVER_ADDR": "127.0.0.1:1", "LOG_LEVEL": "debug"},
        overrides={"addr": "127.0.0.1:2", "log_level": None, "max_keys": 7},
    )
    assert s.addr == "127.0.0.1:2"
    assert s.log_level == "debug"  # a None override (flag not given) leaves env in charge
    assert s.max_keys == 7


def test_settings_toml_top_level(tmp_path: Path) -> None:
    path = tmp_path / "sb.toml"
    path.write_text('addr = "127.0.0.1:9001"\ntoken_ttl = "15m"\nmax_keys = 12\n')
    s = load_settings(environ={}, config_file=str(path))
    assert (s.addr, s.token_ttl, s.max_keys) == ("127.0.0.1:9001", 900.0, 12)


def test_settings_toml_syncbridge_table(tmp_path: Path) -> None:
    path = tmp_path / "sb.toml"
    path.write_text(
        "[syncbridge]\n"
        'log_format = "json"\n'
        "jwt_allow_weak_secret = true\n"
        'allowed_origins = ["https://x.example"]\n'
        "session_ttl = 60\n"
    )
    s = load_settings(environ={}, config_file=str(path))
    assert s.log_format == "json"
    assert s.jwt_allow_weak_secret is True
    assert s.allowed_origins == ("https://x.example",)
    assert s.session_ttl == 60.0


def test_settings_env_beats_file_and_overrides_beat_both(tmp_path: Path) -> None:
    path = tmp_path / "sb.toml"
    path.write_text('log_level = "warning"\nmax_keys = 5\noutbox_size = 3\n')
    s = load_settings(
        environ={"LOG_LEVEL": "error", "MAX_KEYS": "6"},
        overrides={"max_keys": 8},
        config_file=str(path),
    )
    assert (s.log_level, s.max_keys, s.outbox_size) == ("error", 8, 3)


def test_settings_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "sb.toml"
    path.write_text('log_level = "debug"\n')
    assert load_settings(environ={"SYNCBRIDGE_CONFIG": str(path)}).log_level == "debug"


def test_settings_toml_unknown_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "sb.toml"
    path.write_text('addr = ":1"\nlisten_port = 80\n')
    message = config_error(environ={}, config_file=str(path))
    assert "listen_port" in message


def test_settings_toml_invalid_value_names_variable(tmp_path: Path) -> None:
    path = tmp_path / "sb.toml"
    path.write_text('log_level = "chatty"\n')
    assert "LOG_LEVEL" in config_error(environ={}, config_file=str(path))


def test_settings_toml_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("addr = \n")
    assert "not valid TOML" in config_error(environ={}, config_file=str(bad))
    missing = str(tmp_path / "missing.toml")
    assert missing in config_error(environ={}, config_file=missing)


@pytest.mark.parametrize(
    ("env", "value"),
    [("LOG_LEVEL", "loud"), ("LOG_FORMAT", "xml"), ("SERVER_ADDR", "nope"),
     ("SERVER_ADDR", ":99999"), ("MAX_KEYS", "many"), ("MAX_KEYS", "0"), ("MAX_KEYS", "1.5"),
     ("OUTBOX_SIZE", "-1"), ("RATE_BURST", "true"), ("TOKEN_TTL", "0"),
     ("JWT_ALLOW_WEAK_SECRET", "maybe")],
)  # fmt: skip
def test_settings_invalid_value_names_env_var(env: str, value: str) -> None:
    message = config_error(environ={env: value})
    assert message.startswith("invalid configuration: ")
    assert f"{env}: " in message
    assert value in message


def test_settings_several_problems_reported_at_once() -> None:
    env = {
        "LOG_LEVEL": "loud",
        "MAX_KEYS": "many",
        "TOKEN_TTL": "soon",
        "SERVER_ADDR": "nope",
        "MAX_STATE_BYTES": "0",
    }
    message = config_error(environ=env)
    for name in env:
        assert f"{name}: " in message


def test_settings_secret_is_not_a_setting() -> None:
    assert "secret_is_ephemeral" in config_error(
        environ={}, overrides={"secret_is_ephemeral": False}
    )


def test_settings_missing_secret_is_random_and_ephemeral() -> None:
    first = load_settings(environ={})
    second = load_settings(environ={"JWT_SECRET": ""})
    assert first.secret_is_ephemeral
    assert second.secret_is_ephemeral
    assert len(first.jwt_secret.encode()) >= MIN_SECRET_BYTES
    assert first.jwt_secret != second.jwt_secret


def test_settings_given_secret_kept_and_hidden_from_repr() -> None:
    s = load_settings(environ={"JWT_SECRET": STRONG})
    assert s.jwt_secret == STRONG
    assert s.secret_is_ephemeral is False
    assert STRONG not in repr(s)


def test_settings_short_secret_refused() -> None:
    message = config_error(environ={"JWT_SECRET": "short-legacy"})
    assert "JWT_SECRET" in message
    assert "JWT_ALLOW_WEAK_SECRET" in message
    assert "short-legacy" not in message  # never echo a secret


def test_settings_short_secret_allowed_when_opted_in() -> None:
    s = load_settings(environ={"JWT_SECRET": "short-legacy", "JWT_ALLOW_WEAK_SECRET": "1"})
    assert s.jwt_secret == "short-legacy"
    assert s.secret_is_ephemeral is False


def test_settings_secret_length_counted_in_bytes() -> None:
    secret = "é" * (MIN_SECRET_BYTES // 2)  # 2 bytes each
    assert load_settings(environ={"JWT_SECRET": secret}).jwt_secret == secret
    config_error(environ={"JWT_SECRET": secret[:-1]})


@pytest.mark.parametrize(
    ("addr", "host", "port"),
    [(":8080", "0.0.0.0", 8080), ("127.0.0.1:0", "127.0.0.1", 0),
     ("[::1]:9000", "::1", 9000), ("example.org:443", "example.org", 443)],
)  # fmt: skip
def test_settings_host_and_port(addr: str, host: str, port: int) -> None:
    s = load_settings(environ={"SERVER_ADDR": addr})
    assert (s.host, s.port) == (host, port)


def test_settings_log_level_and_format_any_case() -> None:
    settings = load_settings(environ={"LOG_LEVEL": "INFO", "LOG_FORMAT": "JSON"})
    assert settings.log_level == "info"
    assert settings.log_format == "json"
