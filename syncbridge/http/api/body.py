"""Request bodies: size limit (413), JSON (400), shape via the wire's cattrs hooks (422).

Bodies are decoded with orjson and structured with a copy of the protocol's
strict cattrs converter that also refuses unknown fields: a misspelt field is
an error, never silently ignored.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import cattrs
import orjson
from starlette.requests import Request

from syncbridge.http.api.problem import Problem
from syncbridge.protocol.codec import MAX_NESTING_DEPTH, converter, nesting_exceeds
from syncbridge.protocol.messages import InvalidField

__all__ = ["read_json", "structure"]

T = TypeVar("T")

_strict: Final = converter.copy(forbid_extra_keys=True)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


async def read_json(
    request: Request, *, limit: int, media_types: tuple[str, ...], empty: Any = None
) -> Any:
    """The request's JSON body, at most ``limit`` bytes, of one of ``media_types``.

    With ``empty`` given, a request without a body (no Content-Type, no bytes)
    stands for that value.
    """
    media = _media_type(request)
    if empty is not None and not media and request.headers.get("content-length", "0") == "0":
        return empty
    if media not in media_types:
        raise Problem(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"send the body as {' or '.join(media_types)}, not {media or 'no content type'}",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a body without (or lying about) its length
            raise _too_large(limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise _too_deep() from None
        raise Problem(400, "INVALID_JSON", f"the body is not valid JSON: {exc}") from None
    if nesting_exceeds(data, MAX_NESTING_DEPTH):
        raise _too_deep()
    return data


def _too_large(limit: int) -> Problem:
    return Problem(
        413,
        "BODY_TOO_LARGE",
        f"the body is larger than {limit} bytes (HTTP_MAX_BODY_BYTES)",
        extra={"limit_bytes": limit},
    )


def _too_deep() -> Problem:
    return Problem(
        400,
        "NESTING_TOO_DEEP",
        f"the body nests objects/arrays deeper than {MAX_NESTING_DEPTH} levels",
        extra={"limit_depth": MAX_NESTING_DEPTH},
    )


def _describe(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    return f"invalid value ({type(exc).__name__})"


def structure(data: Any, cls: type[T]) -> T:
    """``data`` as ``cls``, or a 422 problem naming every wrong field."""
    if not isinstance(data, dict):
        raise Problem(422, "INVALID_BODY", "the body must be a JSON object")
    try:
        return _strict.structure(data, cls)
    except cattrs.BaseValidationError as exc:
        unknown = sorted(
            key
            for inner in exc.exceptions
            if isinstance(inner, cattrs.ForbiddenExtraKeysError)
            for key in inner.extra_fields
        )
        if unknown:
            raise Problem(
                422,
                "UNKNOWN_FIELD",
                f"unknown field(s): {', '.join(unknown)}",
                extra={"fields": unknown},
            ) from None
        problems = cattrs.transform_error(exc, path="$", format_exception=_describe)
        for inner in exc.exceptions:
            if isinstance(inner, InvalidField):
                problems = [f"{inner} @ $.{inner.field}"]
        raise Problem(
            422, "INVALID_BODY", "; ".join(problems), extra={"errors": problems}
        ) from None
    except InvalidField as exc:
        raise Problem(
            422, "INVALID_BODY", f"{exc} @ $.{exc.field}", extra={"errors": [str(exc)]}
        ) from None
