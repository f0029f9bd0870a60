"""The shapes of /v1 request bodies (structured by :mod:`syncbridge.http.api.body`)."""

from __future__ import annotations

from typing import Any

import attrs

from syncbridge.protocol.messages import InvalidField

__all__ = ["PutState"]


def _not_negative(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise InvalidField(attribute.name, f"{attribute.name} must not be negative")


@attrs.frozen(kw_only=True)
class PutState:
    """PUT /v1/sessions/{sid}/state: the whole new state."""

    state: dict[str, Any]
    base_version: int | None = attrs.field(default=None, validator=_not_negative)
