"""A browser test whose server dies fails within 60 s, even in a plain Playwright wait.

Its own module: the module-scoped server (and browser) that this test kills are not shared with
the other browser tests.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.conftest import WATCHDOG_GRACE_S, wait_visible

pytestmark = pytest.mark.e2e


def test_a_plain_playwright_wait_fails_within_60_s_when_the_server_exits(page, server):
    page.goto(server.url)
    wait_visible(server, page.locator("h1", has_text="Program"), "the Program page")
    os.killpg(server.process.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)closed") as info:
        page.get_by_text("Run #1: finished").wait_for(timeout=600_000)  # far longer than the bound
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the wait ended after {elapsed:.0f} s"
    assert elapsed >= WATCHDOG_GRACE_S - 1, "the wait must end because the watchdog acted"
    assert type(info.value).__module__.startswith("playwright")
    assert server.exit_status() == "killed by SIGKILL"
