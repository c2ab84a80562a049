"""The web console in a real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python package; no browser is downloaded). One server with the default models
and one browser serve every test (a test that needs other Chromium switches, such as the
fake microphone, launches its own); each test gets a fresh browser context (its own session
storage). Without Chromium or Playwright the tests skip and say which is missing.

``MLX_CONSOLE_SCREENSHOTS=DIR`` writes the panels' screenshots to DIR (``docs/console``
holds the committed ones).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, running_server

CHROMIUM = os.environ.get("MLX_CONSOLE_CHROMIUM") or shutil.which("chromium")
API_KEY = "console-test-key"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if CHROMIUM is None:
        reason = "no Chromium: install Debian's 'chromium' package (.ci/run does)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Playwright's Python package is missing: pip install -e '.[cpu,dev]'"
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


# Package scope, not session: Playwright's sync API runs an event loop on the main thread
# while it is started, and every later test that calls asyncio.run() would fail beside it.
@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # --admin: the models panel's load and unload buttons need the admin routes
    with running_server(tmp_path_factory.mktemp("console-server"), "--admin") as srv:
        yield srv


@pytest.fixture(scope="package")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default registry behind an API key; nothing preloaded (the prompt is the point)."""
    workdir = tmp_path_factory.mktemp("console-auth-server")
    with running_server(workdir, "--api-key", API_KEY, "--no-preload") as srv:
        yield srv


@pytest.fixture(scope="package")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


def launch(playwright, *args: str):
    """Debian's Chromium, headless, with these command-line switches."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(args))


@pytest.fixture(scope="package")
def browser(playwright):
    browser = launch(playwright)
    try:
        yield browser
    finally:
        browser.close()


@contextmanager
def fresh_page(browser, **context_options):
    """A desktop-sized page in a fresh context; JavaScript errors on it fail the test."""
    context = browser.new_context(**{"viewport": DESKTOP, "color_scheme": "light",
                                     **context_options})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture()
def page(browser):
    with fresh_page(browser) as page:
        yield page


def metric(server: Server, name: str, **labels: str) -> float:
    """Sum of a series' samples whose labels include ``labels`` (every model)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def wait_until(page, expression: str, timeout_s: float = 30) -> None:
    """Wait until a JavaScript expression is true. It goes in as a function: the page's
    Content-Security-Policy forbids evaluating strings."""
    page.wait_for_function(f"() => ({expression})", timeout=timeout_s * 1000)


def text_of(selector: str) -> str:
    """A JavaScript expression: the text of the element ``selector`` picks."""
    return f"document.querySelector({selector!r}).textContent"


def screenshot(page, name: str) -> None:
    """Save a screenshot of the page when MLX_CONSOLE_SCREENSHOTS names a directory."""
    target = os.environ.get("MLX_CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"))
