"""The deployment files in config/ stay true to the settings and to the runbook."""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from syncbridge.settings import Settings, iter_options, load_settings, parse_duration

CONFIG = Path(__file__).resolve().parent.parent / "config"
EXAMPLE = CONFIG / "syncbridge.example.toml"
DEFAULTS = load_settings(environ={})


def example_lines() -> dict[str, str]:
    """``name -> value text`` of every setting line in the example, commented out or not."""
    found: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#?\s*([a-z0-9_]+)\s*=\s*(.+)", line.strip())
        if match:
            found[match[1]] = match[2]
    return found


def test_example_toml_shows_every_setting_with_its_env_var() -> None:
    text = EXAMPLE.read_text()
    lines = example_lines()
    missing = [
        f'# {o.name} = ...  (add "# {o.metadata["env"]}: {o.metadata["help"]}" above it)'
        for o in iter_options()
        if o.name not in lines
    ]
    assert not missing, "config/syncbridge.example.toml lacks:\n" + "\n".join(missing)
    for option in iter_options():
        assert f"# {option.metadata['env']}:" in text, option.metadata["env"]
    assert set(lines) <= {o.name for o in iter_options()}, "unknown names in the example"


def test_example_toml_loads_as_shipped() -> None:
    assert "syncbridge" in tomllib.loads(EXAMPLE.read_text())
    settings = load_settings(environ={}, config_file=str(EXAMPLE))
    assert settings.secret_is_ephemeral  # the secret line is left commented


def _comparable(settings: Settings) -> dict[str, Any]:
    values = attrs.asdict(settings)
    for option in iter_options():
        if option.metadata["secret"]:
            values.pop(option.name)
    values.pop("secret_is_ephemeral")
    return values


def test_example_toml_values_are_the_defaults(tmp_path: Path) -> None:
    """Uncommenting every non-secret line changes nothing: the example shows the defaults."""
    secret = {o.name for o in iter_options() if o.metadata["secret"]}
    body = "\n".join(
        f"{name} = {value}" for name, value in example_lines().items() if name not in secret
    )
    uncommented = tmp_path / "syncbridge.toml"
    uncommented.write_text("[syncbridge]\n" + body + "\n")
    loaded = load_settings(environ={}, config_file=str(uncommented))
    assert _comparable(loaded) == _comparable(DEFAULTS)


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((CONFIG / "syncbridge.service").read_text())
    return parser


def test_systemd_unit_runs_syncbridge_and_keeps_the_runbook_name() -> None:
    service = unit()["Service"]
    assert service["Type"] == "exec"
    assert service["ExecStart"].endswith("python -m syncbridge")
    assert service["EnvironmentFile"] == "/etc/syncbridge/env"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["LimitNOFILE"] == "65535"
    assert unit()["Install"]["Alias"] == "harmonyflow-session.service"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_lets_the_drain_finish() -> None:
    stop = parse_duration(unit()["Service"]["TimeoutStopSec"])
    # The drain takes SHUTDOWN_TIMEOUT, then hypercorn up to 2 s for HTTP in flight.
    assert stop > DEFAULTS.shutdown_timeout + 2


def test_systemd_unit_is_hardened() -> None:
    service = unit()["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service.get("DynamicUser") == "yes" or service.get("User") == "syncbridge"


def test_systemd_unit_config_path_is_the_examples_install_path() -> None:
    environment = unit()["Service"]["Environment"]
    assert environment == "SYNCBRIDGE_CONFIG=/etc/syncbridge/syncbridge.toml"
    assert "/etc/syncbridge/syncbridge.toml" in EXAMPLE.read_text()


def nginx_block(text: str, opener: str) -> str:
    """The body of the ``{ ... }`` block that starts with ``opener``."""
    start = text.index(opener + " {") + len(opener) + 2
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    raise AssertionError(f"unclosed block {opener}")


def directives(block: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";"):
            name, _, value = line[:-1].partition(" ")
            found.setdefault(name, []).append(value.strip())
    return found


def test_nginx_proxies_websocket_upgrades_on_ws() -> None:
    text = (CONFIG / "nginx-syncbridge.conf").read_text()
    assert text.count("{") == text.count("}")
    ws = directives(nginx_block(text, "location = /ws"))
    assert ws["proxy_pass"] == ["http://syncbridge"]
    assert ws["proxy_http_version"] == ["1.1"]
    assert "Upgrade $http_upgrade" in ws["proxy_set_header"]
    assert "Connection $connection_upgrade" in ws["proxy_set_header"]
    assert "$http_upgrade $connection_upgrade" in text  # the map that defines it
    assert ws["proxy_buffering"] == ["off"]


def test_nginx_timeouts_outlast_heartbeats_and_liveness() -> None:
    text = (CONFIG / "nginx-syncbridge.conf").read_text()
    ws = directives(nginx_block(text, "location = /ws"))
    assert ws["proxy_read_timeout"] == ["120s"]  # the runbook's values
    assert ws["proxy_send_timeout"] == ["120s"]
    assert parse_duration(ws["proxy_read_timeout"][0]) > DEFAULTS.liveness_timeout


def test_nginx_serves_health_and_targets_the_default_port() -> None:
    text = (CONFIG / "nginx-syncbridge.conf").read_text()
    health = directives(nginx_block(text, "location /health"))
    assert health["proxy_pass"] == ["http://syncbridge"]
    upstream = directives(nginx_block(text, "upstream syncbridge"))
    assert upstream["server"] == [f"127.0.0.1:{DEFAULTS.port}"]


def redis_directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (CONFIG / "redis-syncbridge.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            found.setdefault(name.lower(), []).append(value)
    return found


def test_redis_fragment_never_evicts_session_state() -> None:
    conf = redis_directives()
    assert conf["maxmemory-policy"] == ["noeviction"]
    assert len(conf["maxmemory"]) == 1
    text = (CONFIG / "redis-syncbridge.conf").read_text()
    # The reasons are written down next to the setting.
    for reason in ("allkeys-lru", "volatile-", "STORE_UNAVAILABLE"):
        assert reason in text


@pytest.mark.parametrize(("name", "value"), [("appendonly", "yes"), ("appendfsync", "everysec")])
def test_redis_fragment_is_durable(name: str, value: str) -> None:
    assert redis_directives()[name] == [value]
