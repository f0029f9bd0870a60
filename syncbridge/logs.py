"""Logging set-up for the command line: text for people, JSON lines for collectors."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

__all__ = ["configure_logging"]


class JSONFormatter(logging.Formatter):
    """One JSON object per record, with the fields collectors index."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, fmt: str) -> None:
    """Install one stderr handler on the root logger (only the CLI calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hypercorn's own per-request chatter stays out of info logs.
    logging.getLogger("hypercorn.error").setLevel(max(root.level, logging.WARNING))
    # coredis reports its first EVALSHA of each script (NOSCRIPT, then loaded)
    # as a retry at INFO; only its warnings concern operators.
    logging.getLogger("coredis").setLevel(max(root.level, logging.WARNING))
    # websockets' protocol logs "connection open/closed" at INFO for every socket;
    # our own connection lines (with the close code and who closed) say more.
    logging.getLogger("websockets").setLevel(max(root.level, logging.WARNING))
