"""End-to-end: the whole flow in a real headless Chromium against `streamlit run app.py`.

1. On the fast scripted test LM: pick a template, assign roles, upload a CSV, compose p -> w -> p by
   clicking blocks, run, watch the score chart gain rounds without a reload, cancel a second run,
   export the bundle and load it in a fresh Python process.
2. A tiny-budget run on the embedded model (2/1/1 examples, strategy p).
3. The waits themselves: once the server process exits, a wait fails within seconds, naming the exit.

Every wait is bounded (``conftest.wait_visible``, ``ACTION_TIMEOUT_MS``) and checks the server process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerExited, new_page, start_server, stop_server, wait_visible

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def nav(page, server, title: str) -> None:
    """Go to a page through the sidebar (a client-side switch: the session and its config stay)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    wait_visible(server, page.locator("h1", has_text=title), f"the {title} page")


def wait_text(page, server, text: str | re.Pattern, timeout_s: float = 60) -> None:
    wait_visible(server, page.get_by_text(text), f"the text {text!r}", timeout_s)


def wait_strategy(page, server, strategy: str) -> None:
    """Wait until the composer shows exactly ``strategy`` (the normalised string of the page)."""
    code = page.locator("code").filter(has_text=re.compile(rf"^{re.escape(strategy)}$"))
    wait_visible(server, code, f"the strategy {strategy!r}")


def only(server, locator, what: str, timeout_s: float = 30):
    """``locator`` once it matches exactly one element: while Streamlit reruns, the stale copy of a
    widget (a form keyed by revision) sits next to the new one for a moment."""
    deadline = time.monotonic() + timeout_s
    while (count := locator.count()) != 1:
        server.check_alive(what)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {count} matching elements after {timeout_s:g} s, expected 1")
        time.sleep(0.25)
    return locator.first


def shot(page, screenshots: Path, name: str) -> None:
    """Screenshot the whole page (Streamlit scrolls inside its main block: use a tall viewport)."""
    page.set_viewport_size({"width": 1280, "height": 2200})
    page.wait_for_timeout(1200)
    page.screenshot(path=str(screenshots / f"{name}.png"))
    page.set_viewport_size({"width": 1280, "height": 800})


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0


def rounds_recorded(page) -> int:
    text = page.get_by_text(re.compile(r"\d+ of \d+ rounds recorded")).first.inner_text()
    return int(text.split(" of ")[0])


def score_points(page) -> int:
    chart = page.locator(".js-plotly-plot").first
    return chart.locator(".scatterlayer .trace").first.locator(".point").count()


def choose(page, label: str, option: str) -> None:
    page.locator('[data-testid="stSelectbox"]', has_text=label).first.click()
    page.get_by_role("option", name=option).first.click()


def test_whole_flow_on_the_scripted_lm(page, server, screenshots, tmp_path):
    page.goto(server.url)
    wait_visible(server, page.locator("h1", has_text="Program"), "the Program page")

    # Program: pick the template, assign roles.
    choose(page, "Template", "Analyze, then classify (analyze_classify)")
    page.get_by_role("button", name="All large (prompts only)").click()
    page.get_by_role("button", name="Last predictor small, others large").click()
    wait_text(page, server, "Predictors")
    no_exception(page)
    shot(page, screenshots, "program")

    # Models: switch to the scripted test LM, slowed down so the run lasts a few seconds.
    nav(page, server, "Models")
    page.get_by_text("Use the fast scripted test LM").click()
    slider = page.get_by_role("slider").first
    slider.wait_for()
    slider.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(400)
    wait_text(page, server, "the scripted test LM.")
    no_exception(page)
    shot(page, screenshots, "models")

    # Data: upload a CSV.
    nav(page, server, "Data")
    page.get_by_text("Upload a file").click()
    csv = tmp_path / "my_documents.csv"
    csv.write_bytes((ROOT / "data" / "documents.csv").read_bytes())
    page.locator('input[type="file"]').set_input_files(str(csv))
    wait_text(page, server, re.compile(r"Using the uploaded file .*my_documents\.csv"))
    wait_text(page, server, "30 train, 10 validation and 20 test examples")  # the default split, kept across templates
    no_exception(page)
    shot(page, screenshots, "data")

    # Strategy: compose p -> w -> p by clicking blocks.
    nav(page, server, "Strategy")
    for button, strategy in (("preset_p", "p"), ("add_w", "p -> w"), ("add_p", "p -> w -> p")):
        page.locator(f".st-key-{button} button").first.click()
        wait_strategy(page, server, strategy)
    wait_text(page, server, "LM calls")
    no_exception(page)
    shot(page, screenshots, "strategy")

    # Run: start and watch rounds arrive live, without reloading.
    nav(page, server, "Run")
    start = page.get_by_role("button", name="Start run")
    start.click()
    wait_text(page, server, re.compile(r"Run #1: (running|queued)"))
    seen_rounds, seen_points = [], []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        server.check_alive("run #1 to finish")
        try:
            seen_rounds.append(rounds_recorded(page))
            seen_points.append(score_points(page))
        except Exception:  # noqa: BLE001 - the fragment may be re-rendering
            pass
        if page.get_by_text("Run #1: finished").count():
            break
        page.wait_for_timeout(300)
    wait_text(page, server, "Run #1: finished", timeout_s=120)
    assert rounds_recorded(page) == 4
    distinct = sorted(set(seen_rounds))
    assert len(distinct) >= 3, f"the view did not gain rounds live: {seen_rounds}"
    assert max(seen_points) > min(seen_points), f"the chart did not gain points live: {seen_points}"
    no_exception(page)
    shot(page, screenshots, "run")

    # A second run, cancelled: keeps the best so far.
    page.get_by_role("button", name="Start run").click()
    wait_text(page, server, re.compile(r"Run #2: (running|queued)"))
    page.get_by_role("button", name=re.compile("Cancel run")).click()
    wait_text(page, server, "Run #2: cancelled", timeout_s=120)
    no_exception(page)
    shot(page, screenshots, "run_cancelled")

    # Results: history, then export run 1 and load the bundle in a fresh process.
    nav(page, server, "Results")
    wait_text(page, server, "Run history")
    choose(page, "Run details", "#1")
    page.get_by_role("tab", name="Baseline vs best").click()
    page.get_by_role("tab", name="Compare runs").click()
    page.get_by_role("tab", name="Export").click()
    page.get_by_role("button", name="Prepare bundle (.zip)").click()
    with page.expect_download(timeout=45_000) as download_info:
        page.get_by_role("button", name="Download bundle").click()
    bundle = tmp_path / "bundle.zip"
    download_info.value.save_as(bundle)
    wait_text(page, server, "load_bundle")
    no_exception(page)
    shot(page, screenshots, "results")

    code = (
        "import json, sys; from core.bundles.export import load_bundle, predict; "
        f"p = load_bundle({str(bundle)!r}); "
        "print(json.dumps(predict(p, {'document': 'A court ruled against the company; a moderate risk.'})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"category"' in done.stdout and '"risk_level"' in done.stdout


@pytest.mark.slow
@pytest.mark.time_limit(1200)
def test_tiny_run_on_the_embedded_model(page, server, screenshots):
    """The product default (embedded models) with the smallest budget: 2/1/1 examples, strategy p,
    one candidate program with one bootstrapped demo (about 25 LM calls)."""
    page.goto(server.url)
    wait_visible(server, page.locator("h1", has_text="Program"), "the Program page")
    nav(page, server, "Data")
    for label, value in (("Train", "2"), ("Validation", "1"), ("Test", "1")):
        box = only(server, page.get_by_label(label, exact=True), f"the {label} box")
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(1000)
    wait_text(page, server, "2 train, 1 validation and 1 test examples")
    nav(page, server, "Strategy")
    page.locator(".st-key-preset_p button").first.click()
    wait_strategy(page, server, "p")
    page.get_by_text("p: prompt · random_search").first.click()
    wait_visible(server, page.get_by_label("num_candidate_programs", exact=True), "the p settings form")
    form = only(server, page.locator('[data-testid="stForm"]').filter(has_text="num_candidate_programs"),
                "the p settings form")
    for label, value in (("num_candidate_programs", "1"), ("max_bootstrapped_demos", "1"),
                         ("max_labeled_demos", "0")):
        only(server, form.get_by_label(label, exact=True), f"the {label} box").fill(value)
    form.get_by_role("button", name="Save settings").click()
    wait_text(page, server, re.compile(r"^~\d+$"))
    shot(page, screenshots, "strategy_embedded")
    nav(page, server, "Run")
    page.get_by_role("button", name="Start run").click()
    wait_text(page, server, re.compile(r"Run #\d+: (running|queued)"), timeout_s=300)
    # About 25 LM calls: a few minutes on 2 busy cores. A crashed server fails this wait within seconds.
    wait_text(page, server, re.compile(r"Run #\d+: (finished|failed|cancelled|interrupted)"), timeout_s=900)
    shot(page, screenshots, "run_embedded")
    assert page.get_by_text(re.compile(r"Run #\d+: finished")).count() == 1
    assert rounds_recorded(page) == 2
    no_exception(page)


def test_a_wait_fails_within_60_s_when_the_server_exits(browser, tmp_path_factory):
    """Kill the server under a waiting test: the wait raises ServerExited naming the signal, fast."""
    doomed = start_server(tmp_path_factory.mktemp("doomed-home"))
    context, page = new_page(browser)
    try:
        page.goto(doomed.url)
        wait_visible(doomed, page.locator("h1", has_text="Program"), "the Program page")
        os.killpg(doomed.process.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ServerExited, match=r"exited \(killed by SIGKILL\) while waiting for a run"):
            wait_visible(doomed, page.get_by_text("Run #1: finished"), "a run that never starts", timeout_s=900)
        assert time.monotonic() - started < 60
    finally:
        context.close()
        stop_server(doomed)
