"""The demo page in a real headless Chromium, in each auth mode: it logs in, authenticates at
the handshake, and chats, and every message names who sent it.

One project per mode (auth=query_token, auth=cookie), rendered with otherwise default answers
and installed once; the server runs with `AUTH_DEV_ENDPOINTS=true`, which the demo needs to
get a token (query_token) or a session cookie (cookie) for any name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from rendering import DEFAULT, free_port, install, package_of, render_cookiecutter
from test_demo_browser import (
    TIMEOUT_MS,
    DemoServer,
    InstalledProject,
    browser,
    demo_page,
    expect_message,
    send,
    server,
    unique,
)

# Fixtures shared with the other demo tests: the module-scoped Chromium, and the server, which
# takes this module's own `project` and `server_environment`.
__all__ = ["browser", "server"]

pytestmark = pytest.mark.timeout(900)

AUTH_MODES = ["query_token", "cookie"]


@pytest.fixture(scope="module", params=AUTH_MODES)
def project(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> InstalledProject:
    answers = DEFAULT.answers | {"auth": request.param}
    root = render_cookiecutter(answers, tmp_path_factory.mktemp(f"browser-{request.param}"))
    assert (root / ".env").read_text().count("AUTH_SECRET=") == 1
    bin_folder = install(root)
    return InstalledProject(bin_folder / "python", package_of(root))


# Each mode reads its own and ignores the other's.
SHORT_SESSIONS = {"AUTH_MAX_TTL_SECONDS": "2", "AUTH_SESSION_SECONDS": "2"}


@pytest.fixture
def server_environment() -> dict[str, str]:
    return {"AUTH_DEV_ENDPOINTS": "true"}


@pytest.fixture
def open_logged_in_page(
    browser: Browser | None, server: DemoServer
) -> Iterator[Callable[[str], Page]]:
    """Opens the demo in a new browser context, logs in as `user`, waits until connected."""
    with contextlib.ExitStack() as pages:

        def open_page(user: str) -> Page:
            page = pages.enter_context(demo_page(browser, server.url))
            expect(page.locator("#status")).to_have_text("closed")
            page.fill("#user", user)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#status")).to_have_text("open", timeout=TIMEOUT_MS)
            return page

        yield open_page


def test_pages_log_in_and_chat_and_messages_name_their_sender(
    open_logged_in_page: Callable[[str], Page],
) -> None:
    alice, bob = open_logged_in_page("alice"), open_logged_in_page("bob")
    text = unique("authenticated-hello")

    send(alice, text)

    expect_message(alice, f"alice: {text}")
    expect_message(bob, f"alice: {text}")
    reply = unique("reply")
    send(bob, reply)
    expect_message(alice, f"bob: {reply}")


@pytest.mark.parametrize(
    "server_environment", [{"AUTH_DEV_ENDPOINTS": "true"} | SHORT_SESSIONS], ids=["2s-sessions"]
)
def test_an_expired_session_closes_the_socket_and_the_page_asks_to_log_in_again(
    open_logged_in_page: Callable[[str], Page],
) -> None:
    page = open_logged_in_page("alice")

    expect(page.locator("#messages")).to_contain_text("session expired", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_have_text("closed")
    expect(page.locator("#login-form")).to_be_visible()

    page.click("#login-form button[type=submit]")
    expect(page.locator("#status")).to_have_text("open", timeout=TIMEOUT_MS)


def test_without_the_dev_endpoints_the_page_says_how_to_turn_them_on(
    browser: Browser | None, project: InstalledProject, tmp_path: Path
) -> None:
    workdir = tmp_path / "server"
    workdir.mkdir()
    demo = DemoServer(project, free_port(), workdir)
    demo.start()
    try:
        with demo_page(browser, demo.url) as page:
            page.fill("#user", "alice")
            page.click("#login-form button[type=submit]")
            expect(page.locator("#messages")).to_contain_text("AUTH_DEV_ENDPOINTS=true")
            expect(page.locator("#status")).not_to_have_text("open")
    finally:
        demo.stop()
