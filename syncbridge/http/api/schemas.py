"""The shapes of /v1 request bodies (structured by :mod:`syncbridge.http.api.body`)."""

from __future__ import annotations

from typing import Any

import attrs

from syncbridge.protocol.messages import InvalidField

__all__ = ["HandoffClaim", "HandoffCreate", "PutState", "SnapshotCreate", "TokenRevoke"]

#: A handoff ticket lives 5 minutes unless asked otherwise, 15 at most.
HANDOFF_DEFAULT_TTL = 300
HANDOFF_MAX_TTL = 900


def _max_chars(limit: int) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and len(value) > limit:
            raise InvalidField(
                attribute.name, f"{attribute.name} is longer than {limit} characters"
            )

    return check


def _id(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not value or len(value) > 256 or not value.isprintable()):
        raise InvalidField(
            attribute.name, f"{attribute.name} must be 1 to 256 printable characters"
        )


def _not_negative(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise InvalidField(attribute.name, f"{attribute.name} must not be negative")


@attrs.frozen(kw_only=True)
class PutState:
    """PUT /v1/sessions/{sid}/state: the whole new state."""

    state: dict[str, Any]
    base_version: int | None = attrs.field(default=None, validator=_not_negative)


@attrs.frozen(kw_only=True)
class SnapshotCreate:
    """POST /v1/sessions/{sid}/snapshots: a label for the restore point."""

    label: str = attrs.field(default="", validator=_max_chars(256))


@attrs.frozen(kw_only=True)
class TokenRevoke:
    """POST /v1/tokens/revoke: one token by ``jti``, or a device's tokens issued until now."""

    jti: str | None = attrs.field(default=None, validator=_id)
    #: The token's ``exp``, when known: the revocation is kept until then.
    expires_at: int | None = attrs.field(default=None, validator=_not_negative)
    session_id: str | None = attrs.field(default=None, validator=_id)
    device_id: str | None = attrs.field(default=None, validator=_id)

    def __attrs_post_init__(self) -> None:
        by_token = self.jti is not None
        by_device = self.session_id is not None and self.device_id is not None
        if by_token == by_device or (
            not by_device and (self.session_id is not None or self.device_id is not None)
        ):
            raise InvalidField(
                "jti", "give either jti (and optionally expires_at) or session_id and device_id"
            )
        if by_device and self.expires_at is not None:
            raise InvalidField("expires_at", "expires_at goes with jti only")


def _ttl(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= HANDOFF_MAX_TTL:
        raise InvalidField(attribute.name, f"ttl must be 1 to {HANDOFF_MAX_TTL} seconds")


@attrs.frozen(kw_only=True)
class HandoffCreate:
    """POST /v1/sessions/{sid}/handoff: how long the ticket may wait for its claim."""

    ttl: int = attrs.field(default=HANDOFF_DEFAULT_TTL, validator=_ttl)


@attrs.frozen(kw_only=True)
class HandoffClaim:
    """POST /v1/handoff/claim: the ticket, and the id of the device taking the session."""

    ticket: str = attrs.field(validator=_max_chars(256))
    device_id: str = attrs.field(validator=_id)
