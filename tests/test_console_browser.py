"""The console in a real headless Chromium against a live server (``pytest -m browser``).

Playwright's sync API is bound to the thread that started it, while the server
and the devices run on trio: the browser lives on one worker thread and each
step is handed to it (``Browser.run``) and awaited without blocking trio.
Every wait is Playwright's own wait on the page's DOM, never a sleep.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from syncbridge.client import AuthFailed, open_client
from syncbridge.errors import CloseCode
from syncbridge.protocol.messages import MessageType

from .conftest import RunningServer, mint
from .console_http import request

pytestmark = pytest.mark.browser

playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="install the test extras: pip install -e '.[test]'"
)
expect = playwright_sync.expect

T = TypeVar("T")
BOUND = 30
ROOT = Path(__file__).parent.parent
SCREENSHOT = ROOT / "docs" / "console.png"
XSS = "<img src=x onerror=alert(1)>"


def chromium_path() -> str:
    found = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if found is None:
        pytest.fail(
            "no chromium on PATH: the browser tests need Debian's chromium package "
            "(apt-get install -y chromium; .ci/run installs it), or CHROMIUM=/path/to/it"
        )
    return found


class Browser:
    """A headless Chromium on a thread of its own."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._playwright: Any = None
        self._browser: Any = None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the browser's thread and wait (for synchronous fixtures)."""
        return self._thread.submit(fn).result()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the browser's thread; trio keeps serving meanwhile."""
        future = self._thread.submit(fn)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def start(self) -> None:
        executable = chromium_path()

        def launch() -> None:
            self._playwright = playwright_sync.sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=executable, args=["--no-sandbox"]
            )

        self.call(launch)

    def new_page(self) -> Any:
        def open_page() -> Any:
            context = self._browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.csp_violations = []
            page.on(
                "console",
                lambda m: "Content Security Policy" in m.text and page.csp_violations.append(m),
            )
            page.alerts = []
            page.on("dialog", lambda d: (page.alerts.append(d.message), d.dismiss()))
            return page

        return self.call(open_page)

    def stop(self) -> None:
        def close() -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        self.call(close)
        self._thread.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    running = Browser()
    running.start()
    yield running
    running.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Any]:
    opened = browser.new_page()
    yield opened
    assert opened.csp_violations == []  # the page keeps to its own policy
    assert opened.alerts == []  # nothing ever ran a script through the data
    browser.call(opened.context.close)


def admin_token() -> str:
    return mint(user="ops", device="console", session="ops", roles=("admin",), ttl=3600)


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(base + "/console")
    page.fill("#token", token)
    page.click("#signin-button")


def open_session(page: Any, session_id: str) -> None:
    page.fill("#session-input", session_id)
    page.click("#session-open")
    expect(page.locator("#session-title")).to_have_text(session_id)


def device_rows(page: Any, device: str) -> Any:
    return page.locator(f'#devices tbody tr[data-device="{device}"]')


async def test_console_sign_in_refused_with_a_device_token_and_accepted_with_an_operator_one(
    server: RunningServer, browser: Browser, page: Any
) -> None:
    device = server.token(device="phone")

    def refused() -> None:
        sign_in(page, server.http, device)
        expect(page.locator("#signin-error")).to_contain_text("not an operator token")
        expect(page.locator("#main")).to_be_hidden()
        assert page.evaluate("sessionStorage.length") == 0

    operator = admin_token()

    def accepted() -> None:
        sign_in(page, server.http, operator)
        expect(page.locator("#main")).to_be_visible()
        expect(page.locator("#whoami")).to_contain_text("ops (admin)")
        expect(page.locator("#health-status")).to_have_text("ok")
        expect(page.locator("#store-detail")).to_contain_text("memory")
        assert page.evaluate("sessionStorage.getItem('syncbridge.console.token')") == operator
        assert page.evaluate("document.cookie") == ""
        assert "token" not in page.url
        page.reload()  # the token survives a reload of the tab, from sessionStorage
        expect(page.locator("#main")).to_be_visible()
        page.click("#signout")
        expect(page.locator("#signin")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0

    with trio.fail_after(BOUND):
        await browser.run(refused)
        await browser.run(accepted)


async def test_console_shows_two_devices_updates_within_a_second(
    server: RunningServer, browser: Browser, page: Any
) -> None:
    def signed_in_on_s1() -> None:
        sign_in(page, server.http, admin_token())
        expect(page.locator("#main")).to_be_visible()
        open_session(page, "s1")
        expect(page.locator("#devices tbody tr")).to_have_count(2)

    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="laptop")) as laptop,
            open_client(server.url, token=server.token(device="phone")) as phone,
        ):
            await browser.run(signed_in_on_s1)
            await laptop.update("theme", "dark")
            await phone.wait_for(MessageType.STATE_UPDATE)
            version = await phone.update("volume", 7)

            def shown_within_a_second() -> None:
                expect(page.locator("#session-version")).to_have_text(str(version), timeout=1000)
                newest = page.locator("#changes tbody tr").first
                expect(newest).to_contain_text(f"{version}phonevolumeSET", timeout=1000)
                expect(page.locator("#state")).to_contain_text('"volume": 7', timeout=1000)
                expect(page.locator("#hot tbody")).to_contain_text("s1")

            await browser.run(shown_within_a_second)


async def test_console_kick_closes_the_device_and_it_disappears(
    server: RunningServer, browser: Browser, page: Any
) -> None:
    def kick_phone() -> None:
        sign_in(page, server.http, admin_token())
        open_session(page, "s1")
        expect(page.locator("#devices tbody tr")).to_have_count(2)
        device_rows(page, "phone").get_by_role("button", name="Kick").click()
        expect(page.locator("#confirm-text")).to_contain_text("Kick device phone of session s1")
        page.click("#confirm-ok")

    def phone_gone() -> None:
        expect(device_rows(page, "phone")).to_have_count(0)
        expect(device_rows(page, "laptop")).to_have_count(1)
        expect(page.locator("#session-closes")).to_contain_text("device phone: 4403 kicked")
        expect(page.locator("#action-output")).to_contain_text('"closed":1')
        expect(page.locator("#closes")).to_contain_text("4403 kicked: session s1, device phone")

    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="laptop")) as laptop,
            open_client(server.url, token=server.token(device="phone")) as phone,
        ):
            await browser.run(kick_phone)
            closed = await phone.wait_closed()
            assert closed.code == CloseCode.KICKED
            await browser.run(phone_gone)
            await laptop.heartbeat()


async def test_console_revoke_refuses_the_devices_tokens_and_closes_it_4402(
    server: RunningServer, browser: Browser, page: Any
) -> None:
    phone_token = server.token(device="phone")

    def revoke_phone() -> None:
        sign_in(page, server.http, admin_token())
        open_session(page, "s1")
        expect(page.locator("#devices tbody tr")).to_have_count(2)
        device_rows(page, "phone").get_by_role("button", name="Revoke").click()
        expect(page.locator("#confirm-text")).to_contain_text(
            "Revoke every token of device phone of session s1"
        )
        page.click("#confirm-ok")

    def phone_gone() -> None:
        expect(device_rows(page, "phone")).to_have_count(0)
        expect(page.locator("#session-closes")).to_contain_text("device phone: 4402 token revoked")
        expect(page.locator("#action-output")).to_contain_text('"revoked":true')

    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(device="laptop")) as laptop,
            open_client(server.url, token=phone_token) as phone,
        ):
            await browser.run(revoke_phone)
            closed = await phone.wait_closed()
            assert closed.code == CloseCode.TOKEN_REVOKED
            await browser.run(phone_gone)
            await laptop.heartbeat()
        # The revoked token no longer authenticates; the laptop's still does.
        async with open_client(server.url) as again:
            with pytest.raises(AuthFailed, match="revoked"):
                await again.authenticate(phone_token)
            await again.authenticate(server.token(device="laptop"))


async def test_console_renders_markup_in_state_and_ids_as_text(
    server: RunningServer, browser: Browser, page: Any
) -> None:
    session = "<b>s</b>"
    token = server.token(session=session, device="<i>tab</i>")

    def shown_as_text() -> None:
        sign_in(page, server.http, admin_token())
        open_session(page, session)
        expect(page.locator("#state")).to_contain_text(XSS)
        expect(page.locator("#changes tbody")).to_contain_text("<i>tab</i>")
        expect(device_rows(page, "<i>tab</i>")).to_have_count(1)
        expect(page.locator("#hot tbody")).to_contain_text(session)
        for markup in ("img", "b", "i"):
            assert page.locator(f"main {markup}").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined"

    with trio.fail_after(BOUND):
        async with open_client(server.url, token=token) as tab:
            await tab.update("x", XSS)
            await tab.update("y", {"nested": "<script>window.__xss = 1</script>"})
            await browser.run(shown_as_text)


async def test_console_actions_confirm_and_show_a_task_dump(
    server: RunningServer, browser: Browser, page: Any
) -> None:
    def dump() -> None:
        sign_in(page, server.http, admin_token())
        expect(page.locator("#main")).to_be_visible()
        page.click("#dump-tasks")
        page.click("#confirm-cancel")
        expect(page.locator("#confirm")).to_be_hidden()
        page.click("#profile")
        expect(page.locator("#confirm-text")).to_contain_text("Profile the server's CPU for 10 s")
        page.keyboard.press("Escape")
        expect(page.locator("#confirm")).to_be_hidden()
        expect(page.locator("#action-output")).to_have_text("")
        page.click("#dump-tasks")
        page.click("#confirm-ok")
        expect(page.locator("#action-output")).to_contain_text("tasks")

    with trio.fail_after(BOUND):
        await browser.run(dump)


async def test_console_screenshot(
    server: RunningServer, browser: Browser, page: Any, tmp_path: Path
) -> None:
    """A populated page, saved for docs/console.md (UPDATE_SCREENSHOT=1 rewrites
    docs/console.png; otherwise it goes to the test's temporary directory)."""
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "console.png"

    server.app.console.sampler.interval = 0.05  # enough chart points without waiting long

    def populated() -> None:
        sign_in(page, server.http, admin_token())
        open_session(page, "demo")
        expect(page.locator("#devices tbody tr")).to_have_count(2)
        expect(page.locator("#session-version")).to_have_text("6")
        expect(page.locator("#hot tbody tr")).to_have_count(2)
        expect(page.locator("#refusals tbody")).to_contain_text("malformed")
        expect(page.locator("#closes")).to_contain_text("4403 kicked")
        # (The CSP forbids eval, so no wait_for_function: 20 points in the chart's line.)
        expect(page.locator("#chart-connections polyline")).to_have_attribute(
            "points", re.compile(r"(\S+\s+){19,}\S+")
        )
        page.screenshot(path=str(target), full_page=True)

    with trio.fail_after(BOUND):
        async with (
            open_client(server.url, token=server.token(session="demo", device="laptop")) as laptop,
            open_client(server.url, token=server.token(session="demo", device="phone")) as phone,
            open_client(server.url, token=server.token(session="demo", device="tablet")) as tablet,
            open_client(server.url, token=server.token(session="other", device="tv")) as tv,
        ):
            await laptop.update("theme", "dark")
            await phone.update("volume", 7)
            await laptop.update("playlist", ["intro", "verse", "chorus"])
            await phone.update("position", {"track": 2, "seconds": 41.5})
            await laptop.update("draft", XSS)
            await phone.delete("draft")
            await tv.update("channel", 4)
            async with open_client(server.url) as stranger:
                await stranger.send({"type": MessageType.AUTH, "payload": {"token": "bad"}})
                await stranger.wait_for(MessageType.AUTH_FAILURE)
            kick = "/admin/kick?session_id=demo&device_id=tablet"
            assert (await request(server.http, kick, admin_token(), method="POST")).status == 200
            await tablet.wait_closed()
            await browser.run(populated)
    assert target.read_bytes().startswith(b"\x89PNG")
