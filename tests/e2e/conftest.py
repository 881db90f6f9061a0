"""Browser tests: a real `streamlit run app.py` on a free port with its own STUDIO_HOME, and Chromium.

No browser test can hang: a Playwright action gives up after ``ACTION_TIMEOUT_MS``, and every
longer wait goes through ``wait_visible``, which polls in short slices and checks the server
process between them. When the server exits (a crash, the OOM killer), the wait raises
``ServerExited`` within a few seconds, naming the exit status and the end of the server's log.

For any other wait (a plain ``wait_for``, ``expect_download``) the ``page`` fixture runs a
``ServerWatchdog``: once the server has been gone for ``WATCHDOG_GRACE_S``, it kills this test
process's Chromium, so the pending Playwright call fails at once ("Target ... closed"), and the
test's report gets a "streamlit server" section naming the exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ACTION_TIMEOUT_MS = 20_000  # clicks, fills, navigation: a live server answers in well under that
POLL_MS = 1_000  # slice of a long wait between two checks of the server process
HEALTHY_TIMEOUT_S = 120
MAX_WAIT_S = 15 * 60  # no single wait may be longer (CI's budget for everything is 90 minutes)
WATCHDOG_GRACE_S = 5.0  # wait_visible names the exit first; then the watchdog ends any other wait


class ServerExited(AssertionError):
    """The streamlit server process exited while a test waited on the page."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests in a real headless Chromium")


@dataclass
class Server:
    """A running `streamlit run app.py`."""

    url: str
    home: Path
    log: Path
    process: subprocess.Popen

    def exit_status(self) -> str | None:
        """How the process ended ("exit code 1", "killed by SIGKILL"); None while it runs."""
        code = self.process.poll()
        if code is None:
            return None
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def check_alive(self, waiting_for: str) -> None:
        """Raise ServerExited naming the exit and the log's end if the server is gone."""
        status = self.exit_status()
        if status is not None:
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-1500:] if self.log.exists() else ""
            raise ServerExited(f"the streamlit server exited ({status}) while waiting for {waiting_for}; "
                               f"end of its log:\n{tail}")


def wait_visible(server: Server, locator, what: str, timeout_s: float = 60) -> None:
    """Wait until ``locator`` shows, at most ``timeout_s``; fail within ~1 s once the server exits."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if not 0 < timeout_s <= MAX_WAIT_S:
        raise ValueError(f"timeout_s={timeout_s} must be in (0, {MAX_WAIT_S}] s")
    deadline = time.monotonic() + timeout_s
    while True:
        server.check_alive(what)
        remaining_ms = (deadline - time.monotonic()) * 1000
        if remaining_ms <= 0:
            raise AssertionError(f"{what} did not show within {timeout_s:g} s (server still running)")
        try:
            locator.first.wait_for(timeout=max(1, min(POLL_MS, remaining_ms)))
            return
        except PlaywrightTimeout:
            continue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_healthy(server: Server, timeout: float = HEALTHY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive("the health check")
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"streamlit did not become healthy at {server.url} within {timeout} s")


def start_server(home: Path) -> Server:
    """Start the app on a free port with ``home`` as STUDIO_HOME (its own process group); wait until healthy."""
    log = home / "streamlit.log"
    port = _free_port()
    env = {**os.environ, "STUDIO_HOME": str(home), "STUDIO_MODEL_CACHE": str(ROOT / ".studio" / "models")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.headless", "true", "--server.address", "localhost"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Server(url=f"http://localhost:{port}", home=home, log=log, process=process)
    try:
        _wait_healthy(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    """Stop the server and everything it started (run workers share its process group)."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(server.process.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        try:
            os.killpg(server.process.pid, signal.SIGKILL)  # leftovers of the group
        except ProcessLookupError:
            pass
        break


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app on a free port, with a fresh STUDIO_HOME."""
    running = start_server(tmp_path_factory.mktemp("studio-home"))
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: run `make chromium` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield instance
        if instance.is_connected():  # a watchdog may have ended it
            instance.close()


def new_page(browser):
    """A fresh browser context and page whose actions give up after ACTION_TIMEOUT_MS."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
    return context, context.new_page()


def chromium_processes() -> list:
    """The Chromium processes this test process started (through Playwright's driver)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name() or any("chromium" in part for part in child.cmdline()[:1]):
                found.append(child)
        except psutil.Error:
            continue
    return found


class ServerWatchdog(threading.Thread):
    """Ends the browser when the server exits, so that no Playwright wait outlives the server."""

    def __init__(self, server: Server) -> None:
        super().__init__(name="server-watchdog", daemon=True)
        self.server = server
        self.stopped = threading.Event()
        self.fired: str | None = None

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            status = self.server.exit_status()
            if status is None:
                continue
            if self.stopped.wait(WATCHDOG_GRACE_S):
                return
            self.fired = status
            for process in chromium_processes():
                try:
                    process.kill()
                except Exception:  # noqa: BLE001 - already gone
                    pass
            return

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(server, Server) and server.exit_status() is not None:
        report.sections.append(("streamlit server", f"the streamlit server exited ({server.exit_status()}) "
                                                    f"during this test; its log: {server.log}"))


@pytest.fixture
def page(browser, server):
    context, page = new_page(browser)
    watchdog = ServerWatchdog(server)
    watchdog.start()
    yield page
    watchdog.stop()
    if watchdog.fired is None:
        context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
