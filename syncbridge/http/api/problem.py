"""RFC 9457 problem details: every /v1 error answer, with a stable ``code``."""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.responses import Response

from syncbridge.errors import RequestError

__all__ = ["PROBLEM_MEDIA_TYPE", "Problem", "problem_type"]

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"

#: Short titles by status (RFC 9457 §3.1.3: the same for every occurrence of a type).
_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_type(code: str) -> str:
    """The problem's ``type`` URI: one per stable code (documented in docs/http-api.md)."""
    return f"urn:syncbridge:problem:{code.lower().replace('_', '-')}"


class Problem(Exception):
    """An HTTP API answer that is an error: raised anywhere below a route, sent as is."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}

    @classmethod
    def from_request_error(cls, exc: RequestError, **extra: Any) -> Problem:
        """The problem for an error the service layer raised (same code as over /ws)."""
        merged = {**(exc.details or {}), **extra}
        return cls(exc.status, exc.error_code, exc.message, extra=merged)

    def body(self) -> dict[str, Any]:
        """The problem document (extension members after the standard ones)."""
        return {
            "type": problem_type(self.code),
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            **self.extra,
        }

    def response(self) -> Response:
        """The problem as an ``application/problem+json`` response."""
        return Response(
            orjson.dumps(self.body()),
            status_code=self.status,
            media_type=PROBLEM_MEDIA_TYPE,
            headers={"cache-control": "no-store", **self.headers},
        )
