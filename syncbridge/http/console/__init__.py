"""The operator console: one page at /console, its live feeds, and its static files."""

from __future__ import annotations

from syncbridge.http.console.routes import CONSOLE_PATH, Console, is_console_path

__all__ = ["CONSOLE_PATH", "Console", "is_console_path"]
