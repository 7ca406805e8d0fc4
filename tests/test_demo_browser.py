"""The demo page in a real headless Chromium: it connects, shows broadcasts, reconnects after a
server restart by itself, keeps rooms apart, answers heartbeats and gives up on a silent server.

The project is rendered with the default answers and installed once for the module; each test
gets its own server process on a free loopback port. The browser is Debian's chromium, driven
by Playwright with `executable_path`: `playwright install` downloads browsers, which CI must
not depend on (.ci/run installs chromium with apt-get).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from rendering import DEFAULT, QUESTIONS, free_port, install, package_of, render_cookiecutter

# Rendering and installing the project is most of the time; the default ceiling is too tight.
pytestmark = pytest.mark.timeout(900)

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container needs --no-sandbox; the rest keeps Chromium from reaching the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# How long the page may take for anything that should be quick: connecting, a message arriving.
TIMEOUT_MS = 10_000
# After a restart the client backs off exponentially (up to 10 s between attempts, with
# jitter), so its way back may take several attempts, each one possibly long.
RECONNECT_TIMEOUT_MS = 40_000
# How long the server may take to answer /healthz after it starts, and to exit on SIGTERM.
SERVER_START_SECONDS = 30.0
SERVER_STOP_SECONDS = 15.0


class InstalledProject:
    def __init__(self, python: Path, package: str) -> None:
        self.python = python
        self.package = package


class DemoServer:
    """`python -m <package>` in a subprocess, on a fixed port so a restart reuses it."""

    def __init__(
        self,
        project: InstalledProject,
        port: int,
        workdir: Path,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.project = project
        self.port = port
        self.environment = environment or {}
        # An empty folder, so no stray .env file changes the settings.
        self.workdir = workdir
        self.log = workdir.parent / f"{workdir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        env = {
            name: value
            for name, value in os.environ.items()
            # The service's own settings come from this test only.
            if not name.startswith(("SERVER_", "HUB_", "ROOMS_", "HEARTBEAT_", "AUTH_"))
        }
        env |= {"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        env |= self.environment
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.project.python), "-m", self.project.package],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            time.sleep(0.1)
        pytest.fail(f"no answer on /healthz after {SERVER_START_SECONDS} s:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM, as an orchestrator would, and wait for the exit; kill only if it hangs."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=SERVER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=SERVER_STOP_SECONDS)
                pytest.fail(f"the server ignored SIGTERM for {SERVER_STOP_SECONDS} s")

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


def unique(text: str) -> str:
    """A message no other test, page or earlier run could have sent."""
    return f"{text}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser | None]:
    """Debian's chromium under Playwright, or None when it is missing: each test then fails
    (not skips, which would hide the demo's tests) when it opens a page."""
    if not CHROMIUM.exists():
        yield None
        return
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> InstalledProject:
    """The template's default answers, rendered and installed into the project's own venv."""
    root = render_cookiecutter(DEFAULT.answers, tmp_path_factory.mktemp("browser-demo"))
    bin_folder = install(root)
    return InstalledProject(bin_folder / "python", package_of(root))


@pytest.fixture
def server_environment() -> dict[str, str]:
    """The service's settings for one test; a test parametrizes this to change them."""
    return {}


@pytest.fixture
def server(
    project: InstalledProject, tmp_path: Path, server_environment: dict[str, str]
) -> Iterator[DemoServer]:
    workdir = tmp_path / "server"
    workdir.mkdir()
    demo = DemoServer(project, free_port(), workdir, server_environment)
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()
        # Shown by pytest only when the test failed: the server's side of the story.
        print(demo.output())


@contextlib.contextmanager
def demo_page(browser: Browser | None, url: str) -> Iterator[Page]:
    """A page at `url` in a browser context of its own (its own cookies: its own user, as it
    were), closed when the block ends."""
    if browser is None:
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        yield page
    finally:
        context.close()


@pytest.fixture
def open_demo_page(browser: Browser | None, server: DemoServer) -> Iterator[Callable[[], Page]]:
    """Opens the demo in a new browser context (its own user, as it were) and waits until it
    is connected."""
    with contextlib.ExitStack() as pages:

        def open_page() -> Page:
            page = pages.enter_context(demo_page(browser, server.url))
            expect(page.locator("#status")).to_have_text("open", timeout=TIMEOUT_MS)
            return page

        yield open_page


def send(page: Page, text: str, room: str | None = None) -> None:
    if room is not None:
        page.select_option("#room-select", room)
    page.fill("#text", text)
    page.click("#send")
    # The page clears the input only when the socket took the message, so a message dropped
    # for want of a connection fails here rather than as a missing message later.
    expect(page.locator("#text")).to_have_value("", timeout=TIMEOUT_MS)


def expect_message(page: Page, text: str) -> None:
    expect(page.locator("#messages")).to_contain_text(text, timeout=TIMEOUT_MS)


def join(page: Page, room: str) -> None:
    page.fill("#room", room)
    page.click("#join-form button[type=submit]")
    # The room becomes selectable once the server acknowledged the join.
    expect(page.locator(f'#room-select option[value="{room}"]')).to_have_count(
        1, timeout=TIMEOUT_MS
    )


def test_a_message_is_broadcast_to_every_page(open_demo_page: Callable[[], Page]) -> None:
    sender, other = open_demo_page(), open_demo_page()
    text = unique("hello")

    send(sender, text)

    expect_message(sender, text)
    expect_message(other, text)


def test_the_page_shows_its_name_and_the_controls_of_its_features(
    open_demo_page: Callable[[], Page],
) -> None:
    """One static page for every combination: it shows what /demo.json names, no more.
    test_demo_minimal_browser.py has the page with every feature off."""
    page = open_demo_page()

    assert page.title() == QUESTIONS["project_name"]
    expect(page.locator("h1")).to_have_text(str(QUESTIONS["project_name"]))
    shown = {
        "#join-form": DEFAULT.answers["use_rooms"],
        "#room-select": DEFAULT.answers["use_rooms"],
        "#sse": DEFAULT.answers["use_sse"],
        "#login-form": DEFAULT.answers["auth"] != "none",
    }
    for selector, visible in shown.items():
        expect(page.locator(selector)).to_be_visible(visible=bool(visible))


def test_the_page_reconnects_by_itself_after_a_server_restart(
    open_demo_page: Callable[[], Page], server: DemoServer
) -> None:
    page = open_demo_page()
    # A reload would forget this, so it proves the page came back on its own.
    page.evaluate("window.loadedBeforeRestart = true")

    server.stop()
    expect(page.locator("#status")).to_have_text("reconnecting", timeout=TIMEOUT_MS)
    server.start()
    expect(page.locator("#status")).to_have_text("open", timeout=RECONNECT_TIMEOUT_MS)

    assert page.evaluate("window.loadedBeforeRestart === true"), "the page was reloaded"
    text = unique("after-restart")
    send(page, text)
    expect_message(page, text)


@pytest.mark.skipif(not DEFAULT.answers.get("use_rooms"), reason="the default has no rooms")
def test_pages_in_different_rooms_see_only_their_rooms(
    open_demo_page: Callable[[], Page],
) -> None:
    alpha_page, beta_page = open_demo_page(), open_demo_page()
    join(alpha_page, "alpha")
    join(beta_page, "beta")
    alpha_text, beta_text = unique("for-alpha"), unique("for-beta")

    # Each sender sees its own message back, so once it shows, the server has already handed
    # it to every member of its room.
    send(alpha_page, alpha_text, room="alpha")
    expect_message(alpha_page, alpha_text)
    send(beta_page, beta_text, room="beta")
    expect_message(beta_page, beta_text)

    # Both pages are still in the lobby. Each connection gets its frames in order, so once
    # this marker arrives, a wrongly delivered message would have arrived before it.
    marker = unique("lobby-marker")
    send(alpha_page, marker, room="lobby")
    expect_message(alpha_page, marker)
    expect_message(beta_page, marker)

    alpha_seen = alpha_page.locator("#messages").inner_text()
    beta_seen = beta_page.locator("#messages").inner_text()
    assert beta_text not in alpha_seen, f"a page in alpha got beta's message:\n{alpha_seen}"
    assert alpha_text not in beta_seen, f"a page in beta got alpha's message:\n{beta_seen}"


# Pings five times a second: a page that did not answer would be closed within a second.
FAST_HEARTBEATS = {"HEARTBEAT_INTERVAL_SECONDS": "0.2", "HEARTBEAT_TIMEOUT_SECONDS": "0.3"}
needs_heartbeats = pytest.mark.skipif(
    not DEFAULT.answers.get("use_heartbeats"), reason="the default has no heartbeats"
)


def record_states(page: Page) -> None:
    page.evaluate(
        "window.states = [];"
        " client.addEventListener('state', (event) => window.states.push(event.detail))"
    )


@needs_heartbeats
@pytest.mark.parametrize("server_environment", [FAST_HEARTBEATS])
def test_the_page_answers_pings_and_stays_connected(open_demo_page: Callable[[], Page]) -> None:
    page = open_demo_page()
    record_states(page)

    page.wait_for_timeout(2_000)  # ten intervals: a page that never answered would be closed

    assert page.evaluate("window.states") == [], "the connection was dropped and reopened"
    text = unique("after-pings")
    send(page, text)
    expect_message(page, text)


@needs_heartbeats
@pytest.mark.parametrize("server_environment", [FAST_HEARTBEATS])
def test_the_page_gives_up_on_a_silent_server_and_comes_back(
    open_demo_page: Callable[[], Page], server: DemoServer
) -> None:
    page = open_demo_page()
    page.wait_for_function("client.pinged === true")
    assert server.process is not None
    # A stopped process keeps its sockets open but says nothing: only the watchdog notices.
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        expect(page.locator("#status")).to_have_text("reconnecting", timeout=TIMEOUT_MS)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    expect(page.locator("#status")).to_have_text("open", timeout=RECONNECT_TIMEOUT_MS)
    text = unique("after-silence")
    send(page, text)
    expect_message(page, text)
