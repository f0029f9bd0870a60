"""Parsing and checking single setting values: durations, rates, addresses, Redis URLs.

Each check raises ValueError with a message for the operator; :mod:`settings`
prefixes it with the environment variable, so start-up stops with one line
naming what to fix.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

__all__ = [
    "address",
    "format_duration",
    "not_negative",
    "one_of",
    "optional_address",
    "parse_duration",
    "parse_rate",
    "positive",
    "redis_addr",
    "redis_url",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like ``250ms``, ``30s``, ``15m``, ``7d``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"expected a duration like 30s, 15m or 7d, got {value!r}")
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The way the runbook writes a duration: ``1h``, ``30s``, ``7d``, ``250ms``."""
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def parse_rate(value: Any) -> float:
    """Messages per second from a number or a numeric string (``100``, ``2.5``)."""
    if isinstance(value, bool):
        raise ValueError(f"expected messages per second like 100 or 2.5, got {value!r}")
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected messages per second like 100 or 2.5, got {value!r}") from None
    if not rate > 0 or rate == float("inf"):
        raise ValueError(f"a rate must be a positive number, got {value!r}")
    return rate


def positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Validator: greater than zero."""
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def one_of(choices: tuple[str, ...]) -> Any:
    """Validator factory: one of ``choices``."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}; got {value!r}")

    return check


def not_negative(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    """Validator: zero or more."""
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


def optional_address(inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """Validator: empty, or HOST:PORT."""
    if value:
        address(inst, attribute, value)


def address(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """Validator: HOST:PORT or :PORT (not a URL)."""
    if "://" in value:
        raise ValueError(f"expected HOST:PORT, not a URL; got {value!r}")
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{attribute.name} must look like HOST:PORT or :PORT, got {value!r}")


def redis_addr(inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """Validator for REDIS_ADDR: empty, or HOST:PORT with a real port (a URL goes in REDIS_URL)."""
    if not value:
        return
    if "://" in value:
        raise ValueError(
            f"expected HOST:PORT, got a URL ({value.partition('://')[0]}://...); "
            "set URLs in REDIS_URL instead"
        )
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {value!r}")


def redis_url(_inst: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    """Validator for REDIS_URL: empty, or redis://HOST:PORT/DB, rediss://..., unix:///PATH."""
    # Checked here, at start-up, because coredis accepts most mistakes and then
    # fails on first use with a long traceback (or retries for ever). The value
    # may hold a password, so messages never repeat it.
    if not value:
        return
    scheme, sep, _ = value.partition("://")
    if not sep:
        raise ValueError(
            "expected redis://HOST:PORT/DB, rediss://... or unix:///PATH "
            "(for a bare HOST:PORT use REDIS_ADDR)"
        )
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"the scheme must be redis, rediss or unix, not {scheme}://")
    parts = urlsplit(value)
    if scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path, e.g. unix:///run/redis/redis.sock")
        return
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError(f"no host: expected {scheme}://HOST:PORT/DB")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(
            f"the database must be a number like /0, got /{database}"
            if "/" not in database
            else "the path must be a database number like /0"
        )
