"""Browser tests: the web client in a real headless Chromium (Playwright), against real server processes.

Playwright drives Debian's Chromium (``/usr/bin/chromium``) and never downloads a browser of its own.
Without Chromium or the Playwright package the tests skip and say why, except under CI, where they
fail. Screenshots go to ``test-artifacts/`` (kept as CI artifacts, ignored by git).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.server_process import ServerProcess

from .support import CHROMIUM, CHROMIUM_ARGS, DESKTOP, WAIT_MS, Person, Servers, require_browser

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Playwright, WebSocket

OpenPage = Callable[..., Person]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the web client in a real headless Chromium")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so that fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{call.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or bool(report.failed)


# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """One headless Chromium for the package; each person gets a context (storage, cookies) of their own."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config) -> Path:
    """``test-artifacts/`` at the top of the repository: screenshots worth keeping."""
    folder = pytestconfig.rootpath / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def open_page(browser: Browser, request: pytest.FixtureRequest, artifacts: Path) -> Iterator[OpenPage]:
    """``open_page(url, label, viewport=...)``: a page in a fresh context; page errors and dialogs fail the test.

    A failed test leaves a screenshot of each of its pages in ``test-artifacts/``.
    """
    people: list[Person] = []

    def open_(url: str, label: str = "page", viewport: Mapping[str, int] = DESKTOP, **options: Any) -> Person:
        size = {"width": viewport["width"], "height": viewport["height"]}
        context = browser.new_context(viewport=size, **options)  # type: ignore[arg-type]
        page = context.new_page()
        person = Person(page, label)
        page.on("pageerror", lambda error: person.problems.append(f"page error: {error}"))
        page.on("console", lambda message: _console(person, message))
        page.on("dialog", lambda dialog: _dialog(person, dialog))
        page.on("websocket", lambda ws: _watch(person, ws))
        page.on("request", lambda request: person.requests.append(request.url))
        people.append(person)
        if url:
            page.goto(url)
        return person

    yield open_

    if _failed(request):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
        for index, person in enumerate(people):
            if not person.page.is_closed():
                person.page.screenshot(path=artifacts / f"failed-{name}-{index}-{person.label}.png")
    problems = [f"{person.label}: {problem}" for person in people for problem in person.problems]
    for person in people:
        person.page.context.close()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _console(person: Person, message: ConsoleMessage) -> None:
    """Console errors fail the test, except the browser's own notes that a server was away or refused."""
    if message.type != "error":
        return
    if "WebSocket connection to" in message.text or "net::ERR_CONNECTION_" in message.text:
        return
    person.problems.append(f"console error: {message.text}")


def _dialog(person: Person, dialog: Dialog) -> None:
    person.problems.append(f"unexpected {dialog.type} dialog: {dialog.message!r}")
    dialog.dismiss()


def _watch(person: Person, ws: WebSocket) -> None:
    person.socket_urls.append(ws.url)
    person.sockets.append(ws)
    ws.on("framesent", lambda payload: person.sent.append(payload if isinstance(payload, str) else "<binary>"))


# --- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def server() -> Iterator[ServerProcess]:
    """One memory-backend server for the tests that need nothing special (each uses rooms of its own)."""
    require_browser()
    servers = Servers()
    process = servers.start(rate_per_second=0)
    yield process
    problems = servers.stop_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Servers of the test's own; stopped afterwards; the test fails if one had to be killed or logged a traceback."""
    owned = Servers()
    yield owned
    problems = owned.stop_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
