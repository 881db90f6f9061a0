"""End-to-end: a sweep on the defaults, started in a real headless Chromium, and its verdict read at the end.

The default template and strategy on the fast scripted test LM: on Strategy, turn on *Compare strategies*
(the strategy's prefixes p, p -> w, p -> w -> p; two seeds), read the estimate of the whole sweep and what
prefix sharing saves; Start sweep on Run and watch it to the end; the Results page's Sweep view shows the
table with the best of each column in bold and the verdict. Every wait is bounded and checks the server.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_visible
from tests.e2e.test_browser import nav, no_exception, only, shot, wait_text

pytestmark = pytest.mark.e2e

VERDICT = re.compile(r"(beats .+ by \d+\.\d ± \d+\.\d points|no difference beyond noise between)")


def test_a_sweep_on_the_defaults_started_in_the_browser_ends_with_its_verdict(page, server, screenshots: Path):
    page.goto(server.url)
    wait_visible(server, page.locator("h1", has_text="Program"), "the Program page")
    nav(page, server, "Models")
    page.get_by_text("Use the fast scripted test LM").click()
    wait_visible(server, page.get_by_role("slider"), "the scripted LM's delay slider")

    nav(page, server, "Strategy")
    page.get_by_text("Compare strategies: a sweep of several strategies x seeds, as one job").click()
    wait_text(page, server, "Prefix sharing: 3 runs instead of 9 separate runs")
    seeds = only(server, page.get_by_label("Seeds per strategy", exact=True), "the seeds box")
    seeds.fill("2")
    seeds.press("Enter")
    wait_text(page, server, "Prefix sharing: 2 runs instead of 6 separate runs")
    no_exception(page)
    shot(page, screenshots, "strategy_sweep")

    nav(page, server, "Run")
    wait_text(page, server, re.compile(r"Sweep .*p -> w -> p.* x seeds 0, 1"))
    page.get_by_role("button", name="Start sweep").click()
    wait_text(page, server, re.compile(r"Sweep #1: (running|finished)"))
    wait_text(page, server, "Sweep #1: finished", timeout_s=240)
    wait_text(page, server, "Highest mean test score")
    no_exception(page)
    shot(page, screenshots, "run_sweep")

    page.get_by_role("button", name="Open the Sweep view (Results)").click()
    wait_visible(server, page.locator("h1", has_text="Results"), "the Results page")
    wait_text(page, server, "Test score per strategy and seed")
    wait_visible(server, page.get_by_text(VERDICT), "the verdict")
    table = page.locator('[data-testid="stMarkdown"] table').filter(has_text="mean ± sd")
    wait_visible(server, table, "the strategies x seeds table")
    assert table.locator("tbody tr").count() == 3
    assert table.locator("strong").count() >= 3  # the best of each column (two seeds and the mean) in bold
    wait_visible(server, page.locator(".js-plotly-plot"), "the sweep's chart")
    no_exception(page)
    shot(page, screenshots, "results_sweep")
