"""Hostile but correctly signed tokens (issue 12, items 5 and 6), on both stores.

Claims out of type or range are an AuthFailure 401 over /ws and a 401 over
HTTP (never a 1011 or a 500); ids cannot smuggle the Redis presence separator
past the device limit; operator tokens are never renewed and device tokens only
up to TOKEN_MAX_LIFETIME after the original sign-in.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import trio

from syncbridge.client import Client
from syncbridge.protocol.messages import MessageType

from ..conftest import SECRET, mint
from ..test_admin_e2e import http_get
from . import open_resuming, open_servers
from .conftest import StoreUnderTest

BOUND = 15  # seconds


def forge(**claims: Any) -> str:
    """A token signed with the server's secret, carrying exactly ``claims``.

    pyjwt's encoder writes NaN and Infinity as JSON allows them in Python, and
    escapes lone surrogates: the hostile cases of the issue.
    """
    body = {"user_id": "u1", "device_id": "d1", "session_id": "s1", "exp": time.time() + 600}
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


async def auth(client: Client, token: str) -> dict[str, Any]:
    message = {"type": MessageType.AUTH, "payload": {"token": token}, "correlation_id": "a"}
    await client.send(message)
    return await client.next_message(timeout=5)


HOSTILE = [
    {"exp": float("nan")},
    {"exp": float("inf")},
    {"exp": 1e400},
    {"exp": time.time() + 600.5},
    {"exp": True},
    {"iat": float("nan")},
    {"nbf": float("-inf")},
    {"auth_time": 2**70},
    {"session_id": "s\ud800"},
    {"device_id": "d\x1f1"},
    {"user_id": "u\x00"},
]


@pytest.mark.parametrize("claims", HOSTILE, ids=lambda c: repr(c)[:40])
async def test_hostile_claims_are_a_clean_401_on_ws_and_http(
    store: StoreUnderTest, claims: dict[str, Any]
) -> None:
    token = forge(**claims)
    with trio.fail_after(BOUND):
        async with open_servers(store.settings()) as (server,):
            async with open_resuming(server.url) as client:
                reply = await auth(client, token)
                assert reply["type"] == MessageType.AUTH_FAILURE
                assert reply["payload"]["code"] == 401
                # The socket is still open, unauthenticated, and usable.
                assert (await client.heartbeat("still-open"))["client_time"] == "still-open"
                await client.authenticate(mint())
            status, body = await http_get(server.http, "/metrics", forge(roles=["admin"], **claims))
            assert status == 401, body
            admin = mint(user="ops", device="cli", session="ops", roles=("admin",))
            status, body = await http_get(server.http, "/metrics", admin)
            assert status == 200
            text = body.decode()
            assert "syncbridge_auth_failures_total{reason=" in text
            assert 'reason="claim_range"' in text or 'reason="claim_chars"' in text


async def test_separator_in_device_id_cannot_bypass_the_device_limit(
    store: StoreUnderTest,
) -> None:
    # On Redis a presence member is "<device id>\x1f<connection>": an id with
    # \x1f in it counted as another device's connection (40 of 40 accepted with
    # a limit of 32). Such ids are refused; the limit holds.
    with trio.fail_after(BOUND):
        async with (
            open_servers(store.settings(max_devices_per_session=2)) as (server,),
            open_resuming(server.url) as a,
            open_resuming(server.url) as b,
        ):
            await a.authenticate(mint(device="a"))
            await b.authenticate(mint(device="b"))
            for device in ("a\x1fx", "b\x1fa\x1f1", "\x1f", "c\x1f"):
                async with open_resuming(server.url) as c:
                    reply = await auth(c, forge(device_id=device))
                    assert (reply["type"], reply["payload"]["code"]) == (
                        MessageType.AUTH_FAILURE,
                        401,
                    )
            async with open_resuming(server.url) as c:
                reply = await auth(c, mint(device="c"))
                assert reply["type"] == MessageType.AUTH_FAILURE
                assert reply["payload"]["error_code"] == "TOO_MANY_DEVICES"
            devices = await a.devices()
            assert sorted(d["device_id"] for d in devices["devices"]) == ["a", "b"]


# --- renewal (item 6) --------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "metrics", "service"])
async def test_operator_token_is_never_renewed_over_ws(store: StoreUnderTest, role: str) -> None:
    now = int(time.time())
    token = forge(roles=[role], exp=now + 20, iat=now)
    with trio.fail_after(BOUND):
        async with (
            open_servers(store.settings()) as (server,),
            open_resuming(server.url) as client,
        ):
            reply = await auth(client, token)
            assert reply["type"] == MessageType.AUTH_SUCCESS
            assert "new_token" not in reply["payload"]
            assert reply["payload"]["expires_at"] == now + 20  # not a 1 h renewal
            metrics = server.app.metrics.render().decode()
            assert 'syncbridge_refusals_total{reason="renewal_operator_role"} 1.0' in metrics


async def test_device_token_is_renewed_only_up_to_the_max_lifetime(store: StoreUnderTest) -> None:
    now = int(time.time())
    week = 7 * 86400  # TOKEN_MAX_LIFETIME's default
    with trio.fail_after(BOUND):
        async with (
            open_servers(store.settings()) as (server,),
            open_resuming(server.url) as client,
        ):
            # Signed in 8 days ago (iat), still valid: no renewal.
            reply = await auth(client, forge(iat=now - 8 * 86400, exp=now + 600))
            assert reply["type"] == MessageType.AUTH_SUCCESS
            assert "new_token" not in reply["payload"]
            assert reply["payload"]["expires_at"] == now + 600
            # Signed in a week minus 100 s ago (auth_time): renewed up to the cap only.
            signed_in = now - week + 100
            reply = await auth(client, forge(iat=now, auth_time=signed_in, exp=now + 600))
            assert reply["type"] == MessageType.AUTH_SUCCESS
            assert reply["payload"]["expires_at"] <= signed_in + week
            renewed = jwt.decode(reply["payload"]["new_token"], SECRET, algorithms=["HS256"])
            assert renewed["auth_time"] == signed_in
            assert renewed["exp"] == reply["payload"]["expires_at"]
            # A fresh sign-in gets the usual TOKEN_TTL (1 h), carrying auth_time.
            reply = await auth(client, forge(iat=now, exp=now + 600))
            fresh = jwt.decode(reply["payload"]["new_token"], SECRET, algorithms=["HS256"])
            assert fresh["exp"] - fresh["iat"] == 3600
            assert fresh["auth_time"] == now


async def test_token_max_lifetime_setting_reaches_the_service(store: StoreUnderTest) -> None:
    now = int(time.time())
    with trio.fail_after(BOUND):
        async with (
            open_servers(store.settings(token_max_lifetime=60.0)) as (server,),
            open_resuming(server.url) as client,
        ):
            reply = await auth(client, forge(iat=now - 120, exp=now + 600))
            assert reply["type"] == MessageType.AUTH_SUCCESS
            assert "new_token" not in reply["payload"]
