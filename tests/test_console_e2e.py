"""The console over real HTTP: security headers, who may read and act, what the feeds say."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from syncbridge.client import Client, Disconnected, open_client
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from .conftest import RunningServer, mint
from .console_http import open_event_stream, request

BOUND = 20
STATIC = Path(__file__).parent.parent / "syncbridge" / "http" / "console" / "static"


def admin_token() -> str:
    return mint(user="ops", device="console", session="ops", roles=("admin",))


def metrics_token() -> str:
    return mint(user="prom", device="scraper", session="ops", roles=("metrics",))


async def test_console_page_is_served_with_a_strict_content_security_policy(
    server: RunningServer,
) -> None:
    with trio.fail_after(BOUND):
        page = await request(server.http, "/console")
        script = await request(server.http, "/console/static/console.js")
        style = await request(server.http, "/console/static/console.css")
        missing = await request(server.http, "/console/static/../app.py")
    assert page.status == script.status == style.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert missing.status == 404
    for response in (page, script, style, missing):
        csp = response.headers["content-security-policy"]
        directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
        assert directives["default-src"] == ["'none'"]
        assert directives["script-src"] == ["'self'"]
        assert directives["style-src"] == ["'self'"]
        assert directives["frame-ancestors"] == ["'none'"]
        assert "unsafe" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


def test_console_page_has_no_inline_code_and_writes_text_only() -> None:
    html = (STATIC / "index.html").read_text()
    # The code without its comment lines (which may name what the code avoids).
    script = "\n".join(
        line
        for line in (STATIC / "console.js").read_text().splitlines()
        if not line.strip().startswith("//")
    )
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script src="/console/static/console.js" defer>'
    ]
    assert re.search(r"<script[^>]*>(?!</script>)", html) is None  # no inline script body
    assert "<style" not in html
    assert re.search(r"\sstyle=", html) is None
    assert re.search(r"\son[a-z]+=", html) is None  # no inline event handlers
    for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert forbidden not in script, forbidden
    assert "new Function" not in script
    assert "localStorage" not in script
    assert "document.cookie" not in script


async def test_console_feeds_and_actions_refuse_missing_and_device_tokens(
    server: RunningServer,
) -> None:
    device = server.token(device="phone")
    routes = [
        ("GET", "/console/api/me"),
        ("GET", "/console/api/overview"),
        ("GET", "/console/api/session?session_id=s1"),
        ("POST", "/admin/kick?session_id=s1&device_id=phone"),
        ("POST", "/admin/revoke?session_id=s1&device_id=phone"),
        ("GET", "/debug/tasks"),
        ("GET", "/debug/profile?seconds=0.1"),
    ]
    with trio.fail_after(BOUND):
        for method, path in routes:
            assert (await request(server.http, path, method=method)).status == 401, path
            assert (await request(server.http, path, "bad", method=method)).status == 401, path
            refused = await request(server.http, path, device, method=method)
            assert refused.status == 403, path
            assert "role" in refused.json()["error"]
        # The metrics role may watch, not read a session's state or act.
        assert (await request(server.http, "/console/api/me", metrics_token())).status == 200
        for method, path in routes[2:]:
            assert (await request(server.http, path, metrics_token(), method=method)).status == 403
        assert (await request(server.http, "/admin/kick", admin_token())).status == 405
        assert (await request(server.http, "/admin/revoke", admin_token())).status == 405
        assert (await request(server.http, "/console", method="POST")).status == 405
        head = await request(server.http, "/console/api/overview", admin_token(), method="HEAD")
        assert head.status == 405


async def test_console_overview_feed_shows_health_charts_hot_sessions_and_refusals(
    server: RunningServer,
) -> None:
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(session="hot", device="a")) as a,
            open_client(server.url, token=server.token(session="hot", device="b")) as b,
            open_client(server.url) as stranger,
        ):
            await stranger.send({"type": MessageType.AUTH, "payload": {"token": "bad"}})
            await stranger.wait_for(MessageType.AUTH_FAILURE)
            for i in range(3):
                await a.update("k", i)
                await b.wait_for(MessageType.STATE_UPDATE)
            async with open_event_stream(
                server.http, "/console/api/overview", metrics_token()
            ) as feed:
                assert feed.status == 200
                assert feed.headers["content-type"].startswith("text/event-stream")
                history = await feed.wait_for("history")
                overview = await feed.wait_for("overview")
    assert history["samples"]
    assert history["interval"] > 0
    assert overview["health"]["status"] == "ok"
    assert overview["health"]["store"]["backend"] == "memory"
    assert all(sample["at"] > history["samples"][-1]["at"] for sample in overview["samples"])
    [hot] = overview["hot"]
    assert hot["session_id"] == "hot"
    assert hot["devices"] == 2
    assert hot["version"] == 3
    assert hot["rate"] > 0
    assert overview["refusals"]["auth"] == {"malformed": 1}


async def test_console_session_feed_streams_state_changes_devices_and_kicks(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncbridge.audit")
    path = "/console/api/session?session_id=s1"
    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="laptop")) as laptop,
            open_client(server.url, token=server.token(device="phone")) as phone,
            open_event_stream(server.http, path, admin_token()) as feed,
        ):
            await feed.wait_for("devices", lambda d: len(d["devices"]) == 2)
            version = await laptop.update("theme", "<img src=x onerror=alert(1)>")
            changes = await feed.wait_for("changes")
            state = await feed.wait_for("state")
            assert changes[-1]["version"] == version
            assert (changes[-1]["device_id"], changes[-1]["key"]) == ("laptop", "theme")
            assert state["state"] == {"theme": "<img src=x onerror=alert(1)>"}
            kicked = await request(
                server.http,
                "/admin/kick?session_id=s1&device_id=phone",
                admin_token(),
                method="POST",
            )
            assert kicked.json() == {"closed": 1, "close_code": 4403}
            closed = await phone.wait_closed()
            assert closed.code == CloseCode.KICKED
            devices = await feed.wait_for("devices", lambda d: len(d["devices"]) == 1)
            assert devices["devices"][0]["device_id"] == "laptop"
            closes = await feed.wait_for("closes")
            assert [(c["device_id"], c["code"]) for c in closes] == [("phone", 4403)]
            await laptop.heartbeat()  # the other device is untouched
    assert any(
        "user=ops device=console action=kick target=session='s1' device='phone'" in r.message
        and "1 connection(s) closed" in r.message
        for r in caplog.records
    )


async def test_console_revoke_is_audited_and_needs_its_target(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncbridge.audit")
    with trio.fail_after(BOUND):
        bad = await request(server.http, "/admin/revoke?device_id=x", admin_token(), method="POST")
        done = await request(
            server.http, "/admin/revoke?session_id=s1&device_id=gone", admin_token(), method="POST"
        )
    assert bad.status == 400
    assert done.status == 200
    assert done.json()["revoked"] is True
    assert done.json()["close_code"] == 4402
    actions = [r.message for r in caplog.records if r.name == "syncbridge.audit"]
    assert any("action=revoke" in m and "device='gone'" in m for m in actions)


async def test_console_kick_of_an_unknown_device_is_404_and_audited(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncbridge.audit")
    with trio.fail_after(BOUND):
        missing = await request(
            server.http, "/admin/kick?session_id=s1&device_id=nope", admin_token(), method="POST"
        )
        bad = await request(server.http, "/admin/kick?session_id=s1", admin_token(), method="POST")
        tasks = await request(server.http, "/debug/tasks", admin_token())
    assert missing.status == 404
    assert bad.status == 400
    assert tasks.status == 200
    actions = [r.message for r in caplog.records if r.name == "syncbridge.audit"]
    assert any("action=kick" in m and "0 connection(s)" in m for m in actions)
    assert any("action=dump-tasks" in m for m in actions)
    assert all("eyJ" not in m for m in actions)  # never a token


async def test_console_is_served_only_on_admin_addr_when_set(server_factory: Any) -> None:
    server: RunningServer = await server_factory(admin_addr="127.0.0.1:0")
    admin = server.info.admin_url
    assert admin is not None
    with trio.fail_after(BOUND):
        assert (await request(server.http, "/console")).status == 404
        assert (await request(server.http, "/console/api/me", admin_token())).status == 404
        assert (await request(admin, "/console")).status == 200
        assert (await request(admin, "/console/api/me", admin_token())).status == 200
        assert (await request(admin, "/console/api/me")).status == 401
        async with open_event_stream(admin, "/console/api/overview", admin_token()) as feed:
            assert (await feed.wait_for("overview"))["health"]["status"] == "ok"


async def test_console_feed_ends_when_the_server_drains(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        async with open_event_stream(server.http, "/console/api/overview", admin_token()) as feed:
            await feed.wait_for("overview")
            server.stop.set()
            end = await feed.wait_for("end")
    assert end == {"reason": "draining"}


async def test_console_session_feed_needs_a_session_id(server: RunningServer) -> None:
    with trio.fail_after(BOUND):
        response = await request(server.http, "/console/api/session", admin_token())
    assert response.status == 400


async def flood(client: Client) -> None:
    """Send heartbeats until the server closes the socket (raises Disconnected)."""
    for i in itertools.count():
        await client.send_raw(f'{{"type":1,"correlation_id":"f{i}"}}')


async def test_console_lists_slow_consumer_and_rate_limit_closes(server_factory: Any) -> None:
    server: RunningServer = await server_factory(rate_limit=0.001, rate_burst=5)
    path = "/console/api/session?session_id=s1"
    with trio.fail_after(BOUND):
        async with open_event_stream(server.http, path, admin_token()) as feed:
            async with open_client(server.url, token=server.token(device="flooder")) as flooder:
                with pytest.raises(Disconnected):
                    await flood(flooder)
                assert (await flooder.wait_closed()).code == CloseCode.FLOODING
            async with open_client(server.url, token=server.token(device="slow")) as slow:
                # The hub's own close for a consumer that missed events (as after a
                # pub/sub reconnect): the same close as a full outbox.
                assert server.app.hub.close_session("s1") == 1
                assert (await slow.wait_closed()).code == CloseCode.SLOW_CONSUMER
            codes: list[int] = []
            while codes != [4429, 4000]:
                codes += [c["code"] for c in await feed.wait_for("closes")]
        async with open_event_stream(server.http, "/console/api/overview", admin_token()) as feed:
            overview = await feed.wait_for("overview")
    assert [(c["device_id"], c["code"]) for c in overview["closes"]] == [
        ("slow", 4000),
        ("flooder", 4429),
    ]
    assert overview["refusals"]["closes"] == {"4429": 1, "4000": 1}
    assert overview["refusals"]["errors"] == {"RATE_LIMITED": 4}


async def test_console_feed_ends_when_the_browser_goes(server: RunningServer) -> None:
    console = server.app.console
    with trio.fail_after(BOUND):
        async with (
            open_event_stream(server.http, "/console/api/overview", admin_token()) as overview,
            open_event_stream(
                server.http, "/console/api/session?session_id=s1", admin_token()
            ) as session,
        ):
            await overview.wait_for("overview")
            await session.wait_for("alive")
            assert console.open_feeds == 2
        await console.wait_no_feeds()  # the sockets closed: both feeds ended
    assert console.open_feeds == 0
