"""The HTTP API v1 (/v1/...): session state over authenticated REST (docs/http-api.md)."""

from __future__ import annotations

from syncbridge.http.api.context import ApiContext
from syncbridge.http.api.routes import create_api

__all__ = ["ApiContext", "create_api"]
