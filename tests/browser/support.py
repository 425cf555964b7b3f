"""What the browser tests share: the Chromium requirement, people (pages), servers, and locators."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest

from tests.e2e.server_process import ServerProcess, free_port, launch, stop_and_check

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, WebSocket

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-quic",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000
"""The longest one expectation waits (Playwright's ``expect`` retries until then)."""
DESKTOP: Mapping[str, int] = {"width": 1280, "height": 800}
PHONE: Mapping[str, int] = {"width": 360, "height": 740}


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def require_browser() -> None:
    """Skip when Chromium or Playwright is missing; under CI a missing browser is a failure."""
    reason = missing_browser()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the browser tests", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


# --- people --------------------------------------------------------------------------------------


@dataclass
class Person:
    """One page in a browser context of its own (its own storage), and what it did and saw."""

    page: Page
    label: str
    problems: list[str] = field(default_factory=list)
    """Page errors, console errors and dialogs: any of them fails the test."""
    sent: list[str] = field(default_factory=list)
    """Every WebSocket frame the page sent, in order."""
    socket_urls: list[str] = field(default_factory=list)
    """The URL of every WebSocket the page opened, in order."""
    sockets: list[WebSocket] = field(default_factory=list)
    """Every WebSocket the page opened, in order."""
    requests: list[str] = field(default_factory=list)
    """The URL of every HTTP request the page made."""

    @property
    def message_box(self) -> Locator:
        return self.page.get_by_role("textbox", name="Message", exact=True)

    def say(self, text: str) -> None:
        """Type into the message box and press Enter, as a person does."""
        self.message_box.fill(text)
        self.message_box.press("Enter")

    @property
    def messages(self) -> Locator:
        """The delivered messages of the room on screen (not the ones still being sent)."""
        return self.page.locator(".view:not([hidden]) > ol.messages:not(.outbox) > li")

    def message(self, text: str) -> Locator:
        return self.messages.filter(has=self.page.locator(".text", has_text=text))

    @property
    def members(self) -> Locator:
        """The names in the member list, in the order shown."""
        return self.page.locator("#member-list > li .member-name")

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    def seqs(self) -> list[int]:
        """The seqs of the messages on screen, in the order shown."""
        values = self.messages.evaluate_all("items => items.map(item => Number(item.dataset.seq))")
        return [int(value) for value in values]

    def frames_of_type(self, kind: str) -> list[str]:
        return [frame for frame in self.sent if f'"type":"{kind}"' in frame]

    def sent_of_type(self, kind: str) -> list[dict[str, Any]]:
        """The frames of one type that the page sent, parsed, in order."""
        return [json.loads(frame) for frame in self.frames_of_type(kind)]

    def open_sockets(self) -> list[WebSocket]:
        """The page's WebSockets not closed, once every event the page had fired has reached the test."""
        self.page.evaluate("0")  # a round trip: the page's earlier events (a socket's close) are in
        return [ws for ws in self.sockets if not ws.is_closed()]


# --- servers -------------------------------------------------------------------------------------


def server_environment() -> dict[str, str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("CHAT_")}
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


class Servers:
    """The server processes of one test (or of the package): started, restarted, stopped and checked."""

    def __init__(self) -> None:
        self.processes: list[ServerProcess] = []

    def start(self, backend_url: str = "memory://", **flags: object) -> ServerProcess:
        """``python -m chat`` on a free port; ``flags`` become options (``max_text=40`` -> ``--max-text 40``)."""
        process = launch(backend_url, flags)
        self.processes.append(process)
        return process

    def start_prefixed(self, factory: str) -> ServerProcess:
        """uvicorn serving a host app (``module:function`` factory) that mounts the chat under a prefix."""
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", str(port)]
        environ = server_environment()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environ.get("PYTHONPATH")]))
        return self._started(ServerProcess(argv, port, environ))

    def stop(self, process: ServerProcess) -> None:
        """SIGTERM ``process``: its members get 1012 and it exits."""
        complaint = process.stop()
        assert complaint is None, complaint

    def rerun(self, process: ServerProcess) -> ServerProcess:
        """Run a stopped server's command again, on the same port, in the same folder (so on the same store file)."""
        return self._started(ServerProcess(process.argv, process.port, server_environment(), process.cwd))

    def restart(self, process: ServerProcess) -> ServerProcess:
        """Stop ``process`` and run it again on the same port."""
        self.stop(process)
        return self.rerun(process)

    def _started(self, process: ServerProcess) -> ServerProcess:
        self.processes.append(process)
        if not process.wait_ready():
            raise RuntimeError(f"the server on port {process.port} did not start:\n{process.log}")
        return process

    def stop_all(self) -> list[str]:
        """Stop every process; the complaints (killed, or a traceback in the log)."""
        return stop_and_check(self.processes)


def page_url(process: ServerProcess, prefix: str = "", **query: str) -> str:
    """The client's address on ``process``; keyword arguments (``room=``, ``name=``) become the query."""
    suffix = "?" + urlencode(query) if query else ""
    return f"http://{process.base}{prefix}/{suffix}"
