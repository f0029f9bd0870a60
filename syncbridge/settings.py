"""Settings: one frozen object from defaults, a TOML file, the environment and flags.

This module is the only reader of the environment. Every knob is declared once,
in :class:`Settings`, with its environment variable and help text; the command
line and the docs are generated from that declaration. Later sources win:
defaults < TOML file < environment < command-line flags.
"""

from __future__ import annotations

import logging
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from syncbridge.errors import ConfigError
from syncbridge.protocol.session import DEFAULT_HISTORY_MAX_BYTES
from syncbridge.setting_values import address as _address
from syncbridge.setting_values import format_duration, parse_duration, parse_rate
from syncbridge.setting_values import not_negative as _not_negative
from syncbridge.setting_values import one_of as _one_of
from syncbridge.setting_values import optional_address as _optional_address
from syncbridge.setting_values import positive as _positive
from syncbridge.setting_values import redis_addr as _redis_addr
from syncbridge.setting_values import redis_url as _redis_url

__all__ = [
    "LISTEN_FD_ENV",
    "MIN_SECRET_BYTES",
    "WORKER_ID_ENV",
    "Settings",
    "format_duration",
    "is_duration",
    "iter_options",
    "load_settings",
    "parse_duration",
    "parse_rate",
    "worker_role",
]

log = logging.getLogger(__name__)

MIN_SECRET_BYTES: Final = 32
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")


def _opt(
    env: str | None,
    help: str,
    *,
    flag: bool = True,
    secret: bool = False,
    kind: str | None = None,
) -> Any:
    # kind "rate": a float that is not a duration (parsed and shown as a number).
    return {"env": env, "help": help, "flag": flag, "secret": secret, "kind": kind}


def is_duration(attribute: attrs.Attribute[Any]) -> bool:
    """Whether a setting is a duration (float seconds, written ``30s``, ``1h``)."""
    return attribute.type in (float, "float") and attribute.metadata.get("kind") != "rate"


@attrs.frozen(kw_only=True)
class Settings:
    """Every setting of a SyncBridge process (durations in seconds, sizes in bytes)."""

    addr: str = attrs.field(
        default=":8080",
        validator=_address,
        metadata=_opt("SERVER_ADDR", "address to serve HTTP and WebSocket on (HOST:PORT)"),
    )
    jwt_secret: str = attrs.field(
        default="",
        repr=False,
        metadata=_opt(
            "JWT_SECRET",
            "HS256 secret for tokens (>= 32 bytes); unset: a random per-process secret",
            flag=False,
            secret=True,
        ),
    )
    jwt_allow_weak_secret: bool = attrs.field(
        default=False,
        metadata=_opt("JWT_ALLOW_WEAK_SECRET", "accept a JWT_SECRET shorter than 32 bytes"),
    )
    token_ttl: float = attrs.field(
        default=3600.0,
        validator=_positive,
        metadata=_opt("TOKEN_TTL", "lifetime of the new_token issued by AuthSuccess"),
    )
    token_max_lifetime: float = attrs.field(
        default=7 * 86400.0,
        validator=_positive,
        metadata=_opt(
            "TOKEN_MAX_LIFETIME",
            "renewal stops this long after the original sign-in (claim auth_time, else iat)",
        ),
    )
    log_level: str = attrs.field(
        default="info",
        validator=_one_of(LOG_LEVELS),
        metadata=_opt("LOG_LEVEL", "debug, info, warning or error"),
    )
    log_format: str = attrs.field(
        default="text",
        validator=_one_of(LOG_FORMATS),
        metadata=_opt("LOG_FORMAT", "text (for people) or json (one object per line)"),
    )
    max_message_bytes: int = attrs.field(
        default=512 * 1024,
        validator=_positive,
        metadata=_opt("MAX_MESSAGE_BYTES", "largest inbound message; larger closes with 1009"),
    )
    auth_timeout: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata=_opt("AUTH_TIMEOUT", "close a socket that has not authenticated by then (4408)"),
    )
    liveness_timeout: float = attrs.field(
        default=60.0,
        validator=_positive,
        metadata=_opt("LIVENESS_TIMEOUT", "close a socket silent for this long (4001)"),
    )
    ping_interval: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata=_opt("PING_INTERVAL", "interval of WebSocket pings that keep proxies open"),
    )
    outbox_size: int = attrs.field(
        default=256,
        validator=_positive,
        metadata=_opt("OUTBOX_SIZE", "messages queued per connection before backpressure"),
    )
    outbox_bytes: int = attrs.field(
        default=4 * 1024 * 1024,
        validator=_positive,
        metadata=_opt(
            "OUTBOX_BYTES",
            "bytes queued per connection before backpressure (one frame always fits)",
        ),
    )
    slow_consumer_timeout: float = attrs.field(
        default=5.0,
        validator=_positive,
        metadata=_opt("SLOW_CONSUMER_TIMEOUT", "wait for room in a full outbox, then close (4000)"),
    )
    rate_limit: float = attrs.field(
        default=100.0,
        validator=_positive,
        metadata=_opt(
            "RATE_LIMIT", "messages per second per connection (beyond: 429)", kind="rate"
        ),
    )
    rate_burst: int = attrs.field(
        default=200,
        validator=_positive,
        metadata=_opt(
            "RATE_BURST", "burst allowance; that many refusals within FLOOD_WINDOW close 4429"
        ),
    )
    flood_window: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_opt("FLOOD_WINDOW", "window in which RATE_BURST refusals close a socket (4429)"),
    )
    http_rate_limit: float = attrs.field(
        default=20.0,
        validator=_positive,
        metadata=_opt("HTTP_RATE_LIMIT", "HTTP API writes per second per token (beyond: 429)"),
    )
    http_rate_burst: int = attrs.field(
        default=40,
        validator=_positive,
        metadata=_opt("HTTP_RATE_BURST", "HTTP API writes a token may send at once"),
    )
    http_max_body_bytes: int = attrs.field(
        default=1_100_000,
        validator=_positive,
        metadata=_opt("HTTP_MAX_BODY_BYTES", "HTTP API request body size (beyond: 413)"),
    )
    snapshots_per_session: int = attrs.field(
        default=20,
        validator=_positive,
        metadata=_opt(
            "SNAPSHOTS_PER_SESSION", "HTTP API restore points kept per session (oldest dropped)"
        ),
    )
    revocation_retention: float = attrs.field(
        default=30 * 86400.0,
        validator=_positive,
        metadata=_opt(
            "REVOCATION_RETENTION",
            "how long a revocation without a known token expiry is enforced",
        ),
    )
    max_devices_per_session: int = attrs.field(
        default=32,
        validator=_positive,
        metadata=_opt("MAX_DEVICES_PER_SESSION", "distinct devices online in one session"),
    )
    max_state_bytes: int = attrs.field(
        default=1_000_000,
        validator=_positive,
        metadata=_opt("MAX_STATE_BYTES", "encoded size of one session's state (beyond: 413)"),
    )
    max_keys: int = attrs.field(
        default=10_000,
        validator=_positive,
        metadata=_opt("MAX_KEYS", "keys in one session's state (beyond: 413)"),
    )
    history_size: int = attrs.field(
        default=1000,
        validator=_positive,
        metadata=_opt("HISTORY_SIZE", "changes kept per session for resume after reconnect"),
    )
    history_max_bytes: int = attrs.field(
        default=DEFAULT_HISTORY_MAX_BYTES,
        validator=_positive,
        metadata=_opt(
            "HISTORY_MAX_BYTES",
            "encoded bytes of the changes kept per session (oldest dropped first)",
        ),
    )
    session_ttl: float = attrs.field(
        default=7 * 86400.0,
        validator=_positive,
        metadata=_opt("SESSION_TTL", "a session unwritten for this long expires"),
    )
    allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_opt(
            "ALLOWED_ORIGINS",
            "comma-separated Origins allowed to open /ws; empty: any (no Origin is always ok)",
        ),
    )
    shutdown_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_opt("SHUTDOWN_TIMEOUT", "longest graceful shutdown on SIGTERM/SIGINT"),
    )
    send_stall_timeout: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata=_opt(
            "SEND_STALL_TIMEOUT",
            "abort a TCP connection whose sent data stays unacknowledged this long",
        ),
    )
    cleanup_timeout: float = attrs.field(
        default=2.0,
        validator=_positive,
        metadata=_opt("CLEANUP_TIMEOUT", "bound on a closing connection's clean-up"),
    )
    handshake_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_opt(
            "HANDSHAKE_TIMEOUT", "a new TCP connection must send its request head within this"
        ),
    )
    max_connections: int = attrs.field(
        default=20_000,
        validator=_positive,
        metadata=_opt(
            "MAX_CONNECTIONS", "open WebSockets per process; beyond: handshakes refused 503"
        ),
    )
    max_sockets_per_device: int = attrs.field(
        default=8,
        validator=_positive,
        metadata=_opt(
            "MAX_SOCKETS_PER_DEVICE",
            "sockets of one device in one session per process (beyond: AuthFailure 429)",
        ),
    )
    handshake_rate: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_opt(
            "HANDSHAKE_RATE", "WebSocket handshakes per second per client address (beyond: 429)"
        ),
    )
    handshake_burst: int = attrs.field(
        default=50,
        validator=_positive,
        metadata=_opt("HANDSHAKE_BURST", "burst allowance of HANDSHAKE_RATE per address"),
    )
    rate_exempt_addresses: tuple[str, ...] = attrs.field(
        default=("127.0.0.1", "::1"),
        metadata=_opt(
            "RATE_EXEMPT_ADDRESSES",
            "comma-separated client addresses without a handshake rate (a local proxy)",
        ),
    )
    ws_deflate: bool = attrs.field(
        default=False,
        metadata=_opt("WS_DEFLATE", "offer permessage-deflate on /ws (costs CPU and memory)"),
    )
    http2_cleartext: bool = attrs.field(
        default=False,
        metadata=_opt("HTTP2_CLEARTEXT", "serve HTTP/2 without TLS (h2c) on the public port"),
    )
    gc_threshold: int = attrs.field(
        default=50_000,
        validator=_not_negative,
        metadata=_opt(
            "GC_THRESHOLD",
            "allocations between young garbage collections (0: Python's default, 700)",
        ),
    )
    workers: int = attrs.field(
        default=1,
        validator=_positive,
        metadata=_opt("WORKERS", "server processes sharing the port (more than 1 needs Redis)"),
    )
    admin_addr: str = attrs.field(
        default="",
        validator=_optional_address,
        metadata=_opt(
            "ADMIN_ADDR",
            "private HOST:PORT for /metrics, /debug and /admin (unset: on the public port; "
            "with WORKERS=N, worker i uses PORT+i-1)",
        ),
    )
    redis_url: str = attrs.field(
        default="",
        validator=_redis_url,
        repr=False,  # may carry a password
        metadata=_opt(
            "REDIS_URL",
            "redis://, rediss:// (TLS) or unix:// URL; set (or REDIS_ADDR) to use Redis",
            flag=False,
            secret=True,
        ),
    )
    redis_addr: str = attrs.field(
        default="",
        validator=_redis_addr,
        metadata=_opt("REDIS_ADDR", "Redis HOST:PORT (e.g. localhost:6379); unset: memory store"),
    )
    redis_username: str = attrs.field(
        default="", metadata=_opt("REDIS_USERNAME", "Redis ACL user name")
    )
    redis_password: str = attrs.field(
        default="",
        repr=False,
        metadata=_opt("REDIS_PASSWORD", "Redis password", flag=False, secret=True),
    )
    redis_db: int = attrs.field(
        default=0,
        validator=_not_negative,
        metadata=_opt("REDIS_DB", "Redis database number (not with REDIS_CLUSTER)"),
    )
    redis_cluster: bool = attrs.field(
        default=False,
        metadata=_opt("REDIS_CLUSTER", "the Redis address is a Redis Cluster node"),
    )
    store_timeout: float = attrs.field(
        default=2.0,
        validator=_positive,
        metadata=_opt("STORE_TIMEOUT", "longest wait for one Redis operation (then 503)"),
    )
    presence_ttl: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata=_opt(
            "PRESENCE_TTL", "a crashed process's devices disappear after this (Redis store)"
        ),
    )
    secret_is_ephemeral: bool = attrs.field(
        default=False, metadata=_opt(None, "set when JWT_SECRET was generated", flag=False)
    )

    @property
    def uses_redis(self) -> bool:
        """Whether Redis is the store (REDIS_URL or REDIS_ADDR set)."""
        return bool(self.redis_url or self.redis_addr)

    @property
    def redis_target(self) -> str:
        """Where Redis is, for logs and the banner (never the password)."""
        if self.redis_url:
            scheme, _, rest = self.redis_url.partition("://")
            return f"{scheme}://{rest.rpartition('@')[2]}"
        return self.redis_addr

    @property
    def host(self) -> str:
        """The host part of :attr:`addr`; empty means every interface."""
        return self.addr.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        """The port part of :attr:`addr`."""
        return int(self.addr.rpartition(":")[2])


WORKER_ID_ENV: Final = "SYNCBRIDGE_WORKER_ID"
LISTEN_FD_ENV: Final = "SYNCBRIDGE_LISTEN_FD"


def worker_role(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(worker number, inherited listening fd) when this process is a supervised worker."""
    env = os.environ if environ is None else environ
    if WORKER_ID_ENV not in env or LISTEN_FD_ENV not in env:
        return None
    return int(env[WORKER_ID_ENV]), int(env[LISTEN_FD_ENV])


def iter_options() -> list[attrs.Attribute[Any]]:
    """The settings a user can set (everything with an environment variable)."""
    return [a for a in attrs.fields(Settings) if a.metadata.get("env")]


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def to_bool(value: Any, _t: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"expected true/false or 1/0, got {value!r}")

    def to_int(value: Any, _t: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None

    def to_origins(value: Any, _t: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(i).strip() for i in items if str(i).strip())

    def to_str(value: Any, _t: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    conv.register_structure_hook(bool, to_bool)
    conv.register_structure_hook(int, to_int)
    conv.register_structure_hook(float, lambda v, _t: parse_duration(v))
    # Rates are floats too, but not durations: they get their own parser.
    rates: dict[str, Any] = {
        a.name: override(struct_hook=_validated(conv, a, parse=parse_rate))
        for a in attrs.fields(Settings)
        if a.metadata.get("kind") == "rate"
    }
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], to_origins)
    conv.register_structure_hook(str, to_str)
    # Run each field's validator while structuring that field, so a value that
    # parses but is out of range is reported at its field (hence its env var)
    # and alongside every other problem, instead of one at a time from __init__.
    checked: dict[str, Any] = {
        a.name: override(struct_hook=_validated(conv, a))
        for a in attrs.fields(Settings)
        if a.validator and a.name not in rates
    }
    conv.register_structure_hook(
        Settings, make_dict_structure_fn(Settings, conv, **checked, **rates)
    )
    return conv


def _validated(
    conv: cattrs.Converter, attribute: attrs.Attribute[Any], *, parse: Any = None
) -> Any:
    validator = attribute.validator
    assert validator is not None

    def hook(value: Any, type_: Any) -> Any:
        result = parse(value) if parse is not None else conv.structure(value, type_)
        validator(None, attribute, result)
        return result

    return hook


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        a.name: environ[a.metadata["env"]] for a in iter_options() if a.metadata["env"] in environ
    }


def _file_values(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept either top-level keys or a [syncbridge] table.
    table = data.get("syncbridge", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [syncbridge] must be a table")
    return dict(table)


def load_settings(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | None = None,
) -> Settings:
    """Build Settings from every source, or raise ConfigError naming every problem.

    ``overrides`` are already-typed or string values from command-line flags.
    An unset JWT_SECRET becomes a random per-process secret, marked ephemeral.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or env.get("SYNCBRIDGE_CONFIG")
    if path:
        values.update(_file_values(path))
    values.update(_env_values(env))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {a.name for a in iter_options()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"in {path or 'configuration'}; `python -m syncbridge --help` lists the settings"
        )
    for name in ("log_level", "log_format"):  # operators write INFO as often as info
        if isinstance(values.get(name), str):
            values[name] = values[name].lower()
    try:
        settings = _converter().structure(values, Settings)
    except cattrs.BaseValidationError as exc:
        problems = cattrs.transform_error(exc, path="config", format_exception=_describe)
        names = {a.name: a.metadata.get("env") for a in attrs.fields(Settings)}
        lines = [_rename(p, names) for p in problems]
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
    return _check_secret(settings)


def _describe(exc: BaseException, _t: Any) -> str:
    if isinstance(exc, KeyError):
        return "required"
    return str(exc) or type(exc).__name__


def _rename(problem: str, names: dict[str, str | None]) -> str:
    """Name the environment variable a user would set instead of an attribute path."""
    text, _, where = problem.rpartition(" @ ")
    attr = where.removeprefix("config.")
    env = names.get(attr)
    if attr == "config" or not where:
        return problem
    return f"{env}: {text}" if env else f"{attr}: {text}"


def _check_secret(settings: Settings) -> Settings:
    if not settings.jwt_secret:
        return attrs.evolve(
            settings, jwt_secret=secrets.token_urlsafe(48), secret_is_ephemeral=True
        )
    length = len(settings.jwt_secret.encode())
    if length < MIN_SECRET_BYTES and not settings.jwt_allow_weak_secret:
        raise ConfigError(
            f"JWT_SECRET is {length} bytes; at least {MIN_SECRET_BYTES} are required "
            "(set JWT_ALLOW_WEAK_SECRET=1 to accept a legacy short secret)"
        )
    return settings
