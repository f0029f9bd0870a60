"""The JSON Schemas of the HTTP API's bodies (components of /v1/openapi.json)."""

from __future__ import annotations

from typing import Any, Final

from syncbridge.http.api.schemas import HANDOFF_MAX_TTL
from syncbridge.protocol.messages import MAX_KEY_CHARS

__all__ = ["ID", "SCHEMAS", "ref"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_INT: Final = {"type": "integer", "minimum": 0}
_TIME: Final = {"type": "integer", "minimum": 0, "description": "Unix seconds"}
_NULLABLE_TIME: Final = {"type": ["integer", "null"], "minimum": 0}
ID: Final = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "description": "1 to 256 printable characters",
}
_WHO: Final = {
    "type": "object",
    "required": ["user_id", "device_id"],
    "properties": {
        "user_id": {"type": ["string", "null"]},
        "device_id": {"type": ["string", "null"]},
    },
}

SCHEMAS: Final[dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details with a stable code (docs/http-api.md#errors)",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string", "pattern": "^[A-Z_]+$"},
        },
        "additionalProperties": True,
    },
    "State": {
        "type": "object",
        "description": "top-level keys of 1 to 1024 characters, any JSON values",
        "propertyNames": {"minLength": 1, "maxLength": MAX_KEY_CHARS},
    },
    "StateResource": {
        "type": "object",
        "required": ["session_id", "version", "state", "updated_at", "updated_by"],
        "properties": {
            "session_id": {"type": "string"},
            "version": _INT,
            "state": ref("State"),
            "updated_at": _NULLABLE_TIME,
            "updated_by": {"oneOf": [_WHO, {"type": "null"}]},
        },
    },
    "PutState": {
        "type": "object",
        "required": ["state"],
        "properties": {
            "state": ref("State"),
            "base_version": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**53},
        },
        "additionalProperties": False,
    },
    "JsonPatch": {
        "type": "array",
        "description": "RFC 6902",
        "items": {
            "type": "object",
            "required": ["op", "path"],
            "properties": {
                "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
                "path": {"type": "string"},
                "from": {"type": "string"},
                "value": {},
            },
        },
    },
    "Change": {
        "type": "object",
        "required": ["version", "key", "value", "operation", "at", "user_id", "device_id"],
        "properties": {
            "version": _INT,
            "key": {"type": "string"},
            "value": {},
            "operation": {"enum": ["SET", "DELETE"]},
            "at": _TIME,
            "user_id": {"type": ["string", "null"]},
            "device_id": {"type": ["string", "null"]},
        },
    },
    "History": {
        "type": "object",
        "required": ["session_id", "since", "version", "changes"],
        "properties": {
            "session_id": {"type": "string"},
            "since": _INT,
            "version": _INT,
            "changes": {"type": "array", "items": ref("Change")},
        },
    },
    "SnapshotCreate": {
        "type": "object",
        "properties": {"label": {"type": "string", "maxLength": 256}},
        "additionalProperties": False,
    },
    "Snapshot": {
        "type": "object",
        "required": ["id", "version", "label", "created_at", "created_by"],
        "properties": {
            "id": {"type": "string"},
            "version": _INT,
            "label": {"type": "string"},
            "created_at": _TIME,
            "created_by": _WHO,
            "state": ref("State"),
        },
    },
    "SnapshotList": {
        "type": "object",
        "required": ["session_id", "snapshots"],
        "properties": {
            "session_id": {"type": "string"},
            "snapshots": {"type": "array", "items": ref("Snapshot")},
        },
    },
    "Device": {
        "type": "object",
        "required": ["device_id", "user_id", "is_online"],
        "properties": {
            "device_id": {"type": "string"},
            "user_id": {"type": "string"},
            "device_type": {"type": ["string", "null"]},
            "device_name": {"type": ["string", "null"]},
            "connected_at": _NULLABLE_TIME,
            "last_seen": _NULLABLE_TIME,
            "is_online": {"type": "boolean"},
        },
    },
    "Devices": {
        "type": "object",
        "required": ["session_id", "devices", "count"],
        "properties": {
            "session_id": {"type": "string"},
            "devices": {"type": "array", "items": ref("Device")},
            "count": _INT,
        },
    },
    "HandoffCreate": {
        "type": "object",
        "properties": {"ttl": {"type": "integer", "minimum": 1, "maximum": HANDOFF_MAX_TTL}},
        "additionalProperties": False,
    },
    "HandoffTicket": {
        "type": "object",
        "required": ["ticket", "expires_at", "session_id"],
        "properties": {
            "ticket": {"type": "string", "minLength": 43},
            "expires_at": _TIME,
            "session_id": {"type": "string"},
        },
    },
    "HandoffClaim": {
        "type": "object",
        "required": ["ticket", "device_id"],
        "properties": {"ticket": {"type": "string", "maxLength": 256}, "device_id": ID},
        "additionalProperties": False,
    },
    "HandoffClaimed": {
        "type": "object",
        "required": ["token", "expires_at", "session_id", "user_id", "device_id", "version"],
        "properties": {
            "token": {"type": "string"},
            "expires_at": _TIME,
            "session_id": {"type": "string"},
            "user_id": {"type": "string"},
            "device_id": {"type": "string"},
            "version": _INT,
        },
    },
    "TokenRevoke": {
        "oneOf": [
            {
                "type": "object",
                "required": ["jti"],
                "properties": {"jti": ID, "expires_at": {**_TIME, "maximum": 2**53}},
                "additionalProperties": False,
            },
            {
                "type": "object",
                "required": ["session_id", "device_id"],
                "properties": {"session_id": ID, "device_id": ID},
                "additionalProperties": False,
            },
        ]
    },
    "Revoked": {
        "type": "object",
        "required": ["revoked", "until"],
        "properties": {"revoked": {"const": True}, "until": _TIME},
    },
}
