"""A client for the HTTP API v1 (httpx, which runs under trio); the only httpx importer.

::

    async with HttpClient("https://sync.example.com", token) as api:
        state = await api.get_state("demo")
        await api.put_state("demo", {**state["state"], "paid": True},
                            base_version=state["version"])

Problems (RFC 9457) are raised as :class:`ApiError` (``status``, ``code``,
``problem``); a 409 on a write based on an older version as
:class:`VersionConflictError`, which carries the current version and state.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import orjson

__all__ = ["ApiError", "HttpClient", "VersionConflictError"]

_PATCH_TYPE = "application/json-patch+json"


class ApiError(Exception):
    """The server answered with a problem document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code: str = str(problem.get("code", ""))
        super().__init__(f"{status} {self.code}: {problem.get('detail', '')}")


class VersionConflictError(ApiError):
    """409 VERSION_CONFLICT: the session moved on; nothing was applied."""

    @property
    def current_version(self) -> int:
        """The session's version now."""
        return int(self.problem["current_version"])

    @property
    def state(self) -> dict[str, Any]:
        """The session's state now."""
        return dict(self.problem["state"])


def _sid(session_id: str) -> str:
    return quote(session_id, safe="")


def _if_match(base_version: int | None) -> dict[str, str]:
    return {} if base_version is None else {"If-Match": f'"{base_version}"'}


class HttpClient:
    """The HTTP API with one Bearer token (device or service)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (idempotent)."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = await self._http.request(method, path, **kw)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            if not isinstance(problem, dict):
                problem = {"detail": str(problem)}
            if problem.get("code") == "VERSION_CONFLICT":
                raise VersionConflictError(response.status_code, problem)
            raise ApiError(response.status_code, problem)
        if response.status_code == 204:
            return None
        return response.json()

    # -- state ------------------------------------------------------------

    async def get_state(self, session_id: str) -> dict[str, Any]:
        """``{session_id, version, state, updated_at, updated_by}``."""
        result: dict[str, Any] = await self._call("GET", f"/v1/sessions/{_sid(session_id)}/state")
        return result

    async def put_state(
        self, session_id: str, state: dict[str, Any], *, base_version: int | None = None
    ) -> dict[str, Any]:
        """Replace the whole state as one new version (conditional with ``base_version``)."""
        result: dict[str, Any] = await self._call(
            "PUT",
            f"/v1/sessions/{_sid(session_id)}/state",
            json={"state": state},
            headers=_if_match(base_version),
        )
        return result

    async def patch_state(
        self,
        session_id: str,
        operations: list[dict[str, Any]],
        *,
        base_version: int | None = None,
    ) -> dict[str, Any]:
        """Apply an RFC 6902 JSON Patch as one new version."""
        result: dict[str, Any] = await self._call(
            "PATCH",
            f"/v1/sessions/{_sid(session_id)}/state",
            content=orjson.dumps(operations),
            headers={"Content-Type": _PATCH_TYPE, **_if_match(base_version)},
        )
        return result

    async def history(self, session_id: str, since: int = 0) -> dict[str, Any]:
        """The changes after ``since`` (ApiError 410 HISTORY_GONE: read the state)."""
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/sessions/{_sid(session_id)}/history", params={"since": since}
        )
        return result

    # -- snapshots --------------------------------------------------------

    async def create_snapshot(self, session_id: str, label: str = "") -> dict[str, Any]:
        """Save a labelled restore point; return its description."""
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/sessions/{_sid(session_id)}/snapshots", json={"label": label}
        )
        return result

    async def list_snapshots(self, session_id: str) -> list[dict[str, Any]]:
        """Restore points, newest first."""
        result = await self._call("GET", f"/v1/sessions/{_sid(session_id)}/snapshots")
        return list(result["snapshots"])

    async def get_snapshot(self, session_id: str, snapshot_id: str) -> dict[str, Any]:
        """One restore point with its state."""
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/sessions/{_sid(session_id)}/snapshots/{_sid(snapshot_id)}"
        )
        return result

    async def restore_snapshot(
        self, session_id: str, snapshot_id: str, *, base_version: int | None = None
    ) -> dict[str, Any]:
        """Make the snapshot's state the session's, as one new version."""
        result: dict[str, Any] = await self._call(
            "POST",
            f"/v1/sessions/{_sid(session_id)}/snapshots/{_sid(snapshot_id)}/restore",
            headers=_if_match(base_version),
        )
        return result

    # -- devices, sessions, tokens ----------------------------------------

    async def devices(self, session_id: str) -> list[dict[str, Any]]:
        """Devices online now."""
        result = await self._call("GET", f"/v1/sessions/{_sid(session_id)}/devices")
        return list(result["devices"])

    async def remove_device(self, session_id: str, device_id: str, *, revoke: bool = False) -> None:
        """Close the device's sockets (4409; with ``revoke``, 4402 and its tokens refused)."""
        await self._call(
            "DELETE",
            f"/v1/sessions/{_sid(session_id)}/devices/{_sid(device_id)}",
            params={"revoke": "true" if revoke else "false"},
        )

    async def delete_session(self, session_id: str) -> None:
        """Delete the session (service token)."""
        await self._call("DELETE", f"/v1/sessions/{_sid(session_id)}")

    async def create_handoff(self, session_id: str, *, ttl: int | None = None) -> dict[str, Any]:
        """``{ticket, expires_at, session_id}`` (device token)."""
        body = {} if ttl is None else {"ttl": ttl}
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/sessions/{_sid(session_id)}/handoff", json=body
        )
        return result

    async def claim_handoff(self, ticket: str, device_id: str) -> dict[str, Any]:
        """A device token for the ticket's session: ``{token, session_id, version, ...}``."""
        result: dict[str, Any] = await self._call(
            "POST", "/v1/handoff/claim", json={"ticket": ticket, "device_id": device_id}
        )
        return result

    async def revoke_token(self, jti: str, *, expires_at: int | None = None) -> dict[str, Any]:
        """Refuse one token everywhere (until ``expires_at`` when given)."""
        body: dict[str, Any] = {"jti": jti}
        if expires_at is not None:
            body["expires_at"] = expires_at
        result: dict[str, Any] = await self._call("POST", "/v1/tokens/revoke", json=body)
        return result

    async def revoke_device(self, session_id: str, device_id: str) -> dict[str, Any]:
        """Refuse every token of a device issued until now."""
        result: dict[str, Any] = await self._call(
            "POST", "/v1/tokens/revoke", json={"session_id": session_id, "device_id": device_id}
        )
        return result
