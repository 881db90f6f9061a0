"""End-to-end: the whole flow in a real headless Chromium against `streamlit run app.py`.

1. On the fast scripted test LM: pick a template, assign roles, upload a CSV, compose p -> w -> p by
   clicking blocks, run, watch the score chart gain rounds without a reload, cancel a second run,
   export the bundle and load it in a fresh Python process.
2. A tiny-budget run on the embedded model (6/3/3 examples, strategy p).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def nav(page, title: str) -> None:
    """Go to a page through the sidebar (a client-side switch: the session and its config stay)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.locator("h1", has_text=title).wait_for()


def wait_text(page, text: str | re.Pattern, timeout: float = 60_000) -> None:
    page.get_by_text(text).first.wait_for(timeout=timeout)


def wait_strategy(page, strategy: str) -> None:
    """Wait until the composer shows exactly ``strategy`` (the normalised string of the page)."""
    page.locator("code").filter(has_text=re.compile(rf"^{re.escape(strategy)}$")).first.wait_for()


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
    page.goto(server["url"])
    page.locator("h1", has_text="Program").wait_for()

    # Program: pick the template, assign roles.
    choose(page, "Template", "Analyze, then classify (analyze_classify)")
    page.get_by_role("button", name="All large (prompts only)").click()
    page.get_by_role("button", name="Last predictor small, others large").click()
    wait_text(page, "Predictors")
    no_exception(page)
    shot(page, screenshots, "program")

    # Models: switch to the scripted test LM, slowed down so the run lasts a few seconds.
    nav(page, "Models")
    page.get_by_text("Use the fast scripted test LM").click()
    slider = page.get_by_role("slider").first
    slider.wait_for()
    slider.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(400)
    wait_text(page, "the scripted test LM.")
    no_exception(page)
    shot(page, screenshots, "models")

    # Data: upload a CSV.
    nav(page, "Data")
    page.get_by_text("Upload a file").click()
    csv = tmp_path / "my_documents.csv"
    csv.write_bytes((ROOT / "data" / "documents.csv").read_bytes())
    page.locator('input[type="file"]').set_input_files(str(csv))
    wait_text(page, re.compile(r"Using the uploaded file .*my_documents\.csv"))
    wait_text(page, "30 train, 10 validation and 20 test examples")  # the default split, kept across templates
    no_exception(page)
    shot(page, screenshots, "data")

    # Strategy: compose p -> w -> p by clicking blocks.
    nav(page, "Strategy")
    for button, strategy in (("preset_p", "p"), ("add_w", "p -> w"), ("add_p", "p -> w -> p")):
        page.locator(f".st-key-{button} button").first.click()
        wait_strategy(page, strategy)
    wait_text(page, "LM calls")
    no_exception(page)
    shot(page, screenshots, "strategy")

    # Run: start and watch rounds arrive live, without reloading.
    nav(page, "Run")
    start = page.get_by_role("button", name="Start run")
    start.click()
    page.get_by_text(re.compile(r"Run #1: (running|queued)")).first.wait_for(timeout=60_000)
    seen_rounds, seen_points = [], []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            seen_rounds.append(rounds_recorded(page))
            seen_points.append(score_points(page))
        except Exception:  # noqa: BLE001 - the fragment may be re-rendering
            pass
        if page.get_by_text("Run #1: finished").count():
            break
        page.wait_for_timeout(300)
    wait_text(page, "Run #1: finished", timeout=120_000)
    assert rounds_recorded(page) == 4
    distinct = sorted(set(seen_rounds))
    assert len(distinct) >= 3, f"the view did not gain rounds live: {seen_rounds}"
    assert max(seen_points) > min(seen_points), f"the chart did not gain points live: {seen_points}"
    no_exception(page)
    shot(page, screenshots, "run")

    # A second run, cancelled: keeps the best so far.
    page.get_by_role("button", name="Start run").click()
    page.get_by_text(re.compile(r"Run #2: (running|queued)")).first.wait_for(timeout=60_000)
    page.get_by_role("button", name=re.compile("Cancel run")).click()
    wait_text(page, "Run #2: cancelled", timeout=120_000)
    no_exception(page)
    shot(page, screenshots, "run_cancelled")

    # Results: history, then export run 1 and load the bundle in a fresh process.
    nav(page, "Results")
    wait_text(page, "Run history")
    choose(page, "Run details", "#1")
    page.get_by_role("tab", name="Baseline vs best").click()
    page.get_by_role("tab", name="Compare runs").click()
    page.get_by_role("tab", name="Export").click()
    page.get_by_role("button", name="Prepare bundle (.zip)").click()
    with page.expect_download(timeout=120_000) as download_info:
        page.get_by_role("button", name="Download bundle").click()
    bundle = tmp_path / "bundle.zip"
    download_info.value.save_as(bundle)
    wait_text(page, "load_bundle")
    no_exception(page)
    shot(page, screenshots, "results")

    code = (
        "import json, sys; from core.export import load_bundle, predict; "
        f"p = load_bundle({str(bundle)!r}); "
        "print(json.dumps(predict(p, {'document': 'A court ruled against the company; a moderate risk.'})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"category"' in done.stdout and '"risk_level"' in done.stdout


@pytest.mark.slow
def test_tiny_run_on_the_embedded_model(page, server, screenshots):
    """The product default (embedded models) with the smallest budget: 2/1/1 examples, strategy p,
    one candidate program with one bootstrapped demo (about 25 LM calls)."""
    page.goto(server["url"])
    page.locator("h1", has_text="Program").wait_for()
    nav(page, "Data")
    for label, value in (("Train", "2"), ("Validation", "1"), ("Test", "1")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(1000)
    wait_text(page, "2 train, 1 validation and 1 test examples")
    nav(page, "Strategy")
    page.locator(".st-key-preset_p button").first.click()
    wait_strategy(page, "p")
    page.get_by_text("p: prompt · random_search").first.click()
    form = page.locator('[data-testid="stForm"]').filter(has_text="num_candidate_programs").first
    for label, value in (("num_candidate_programs", "1"), ("max_bootstrapped_demos", "1"),
                         ("max_labeled_demos", "0")):
        box = form.get_by_label(label, exact=True)
        box.fill(value)
    form.get_by_role("button", name="Save settings").click()
    wait_text(page, re.compile(r"^~\d+$"))
    shot(page, screenshots, "strategy_embedded")
    nav(page, "Run")
    page.get_by_role("button", name="Start run").click()
    page.get_by_text(re.compile(r"Run #\d+: (running|queued)")).first.wait_for(timeout=300_000)
    page.get_by_text(re.compile(r"Run #\d+: (finished|failed|cancelled|interrupted)")).first.wait_for(
        timeout=1_800_000)
    shot(page, screenshots, "run_embedded")
    assert page.get_by_text(re.compile(r"Run #\d+: finished")).count() == 1
    assert rounds_recorded(page) == 2
    no_exception(page)
