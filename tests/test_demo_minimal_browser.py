"""The demo page in a real headless Chromium, in a project with every optional feature off:
the page is one static file for every combination, so it must show exactly the controls of
the features `/demo.json` names (no rooms, no SSE, no login form here) and still chat on the
one broadcast channel. The project's name holds markup, which the page must show as text.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect
from rendering import DEFAULT, install, package_of, render_cookiecutter
from test_demo_browser import (
    InstalledProject,
    browser,
    expect_message,
    open_demo_page,
    send,
    server,
    server_environment,
    unique,
)

# Fixtures shared with the other demo tests: the module-scoped Chromium, the server (which
# takes this module's own `project`) and the page it opens.
__all__ = ["browser", "open_demo_page", "server", "server_environment"]

pytestmark = pytest.mark.timeout(900)

# Markup, an entity and a script in the name: shown as text, never parsed.
NAME = 'Chat <b>bold</b> &amp; "quotes" </script><script>window.injected = 1</script>'
EVERYTHING_OFF = {
    "use_rooms": False,
    "use_sse": False,
    "use_heartbeats": False,
    "auth": "none",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> InstalledProject:
    answers = DEFAULT.answers | EVERYTHING_OFF | {"project_name": NAME, "project_slug": "bare"}
    root = render_cookiecutter(answers, tmp_path_factory.mktemp("browser-bare"))
    bin_folder = install(root)
    return InstalledProject(bin_folder / "python", package_of(root))


def test_the_page_shows_only_the_chosen_features_and_its_name_as_text(
    open_demo_page: Callable[[], Page],
) -> None:
    page = open_demo_page()

    assert page.title() == NAME
    expect(page.locator("h1")).to_have_text(NAME)
    assert page.locator("h1 b, h1 script").count() == 0
    assert page.evaluate("window.injected") is None
    for hidden in ("#join-form", "#room-select", "#rooms", "#sse", "#login-form"):
        expect(page.locator(hidden)).to_be_hidden()
    text = unique("bare-hello")
    send(page, text)
    expect_message(page, text)
