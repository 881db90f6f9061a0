"""End-to-end: on the Results page of a finished scripted run, filter the example matrix to the examples
that changed, open a trace from the matrix, look at the diffs and training rows, and download the
shareable report, which then opens from disk in Chromium with no server. Screenshots of the matrix and
of a trace go to tests/artifacts/screenshots/; with STUDIO_UPDATE_DOCS_IMG=1 they also refresh the
README's pictures in docs/img/ (a test run never changes tracked files otherwise)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.store import Store
from core.store.evidence import MatrixQuery, list_evaluations, matrix_page
from tests.evidence_helpers import scripted_evidence_config

ROOT = Path(__file__).resolve().parents[2]
DOCS_IMG = ROOT / "docs" / "img"
UPDATE_DOCS_IMG = os.environ.get("STUDIO_UPDATE_DOCS_IMG") == "1"
pytestmark = pytest.mark.e2e


def _run(home: Path, tmp_path: Path) -> int:
    """A finished scripted p -> w run in the server's database, through the CLI."""
    doc = scripted_evidence_config()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(doc))
    done = subprocess.run([sys.executable, "-m", "core", "--db", str(home / "studio.db"), "run", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "STUDIO_HOME": str(home)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)["run_id"]


def _shot(page, folder: Path, name: str, height: int = 1500) -> None:
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(1200)
    for target in [folder, DOCS_IMG] if UPDATE_DOCS_IMG else [folder]:
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / name))
    page.set_viewport_size({"width": 1280, "height": 800})


def _wait_idle(page) -> None:
    """Until the app has no script run in progress (Streamlit shows its status widget while running)."""
    page.wait_for_function("() => document.querySelector('[data-testid=\"stStatusWidget\"]') === null",
                           timeout=60_000)


def test_trace_from_the_matrix_and_report_download(page, server, screenshots, tmp_path):
    run_id = _run(server.home, tmp_path)
    store = Store(server.home / "studio.db")
    columns = list_evaluations(store, run_id, "val")
    changed = matrix_page(store, run_id, MatrixQuery(filter="changed", a=0, b=len(columns) - 1), limit=500)
    assert changed.total > 0
    first_changed = changed.rows[0].example_index

    page.goto(f"{server.url}/results?run={run_id}")
    page.locator("h1", has_text="Results").wait_for()
    page.get_by_role("tab", name="Examples").click()
    panel = page.get_by_role("tabpanel", name="Examples")
    panel.get_by_text(re.compile(r"\d+ of \d+ examples shown")).first.wait_for()

    # filter to the examples that changed between the baseline (A) and the last round (B)
    panel.locator('[data-testid="stSelectbox"]', has_text="Show").click()
    page.get_by_role("option", name="changed between A and B").click()
    panel.get_by_text(f"{changed.total} of {columns[0].examples} examples shown").first.wait_for()
    _shot(page, screenshots, "evidence-matrix.png", 1100)

    # open a trace by selecting the first row of the matrix (the row marker at the grid's left edge)
    grid = panel.locator('[data-testid="stDataFrame"]').first
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)
    heading = panel.locator("h4", has_text=re.compile(r"Trace: example \d+ in"))
    heading.wait_for()
    assert heading.inner_text().startswith(f"Trace: example {first_changed} in r{columns[-1].round_index}")
    panel.get_by_text(re.compile(r"^1\. analyze\.predict · scripted/large")).first.wait_for()
    panel.get_by_text(re.compile(r"^2\. classify · scripted/small")).first.wait_for()
    assert panel.locator('[data-testid="stException"]').count() == 0
    heading.scroll_into_view_if_needed()
    _shot(page, screenshots, "evidence-trace.png", 1500)
    page.screenshot(path=str(screenshots / "evidence-trace.png"))

    # diffs: the small predictor moved to its fine-tuned model
    page.get_by_role("tab", name="Diffs").click()
    diffs = page.get_by_role("tabpanel", name="Diffs")
    diffs.get_by_text(re.compile(r"scripted/small:ft-\w+` \(fine-tuned\)|scripted/small:ft-\w+ \(fine-tuned\)")).first.wait_for()

    # training rows of the weight step, with the JSONL download
    page.get_by_role("tab", name="Training data").click()
    training = page.get_by_role("tabpanel", name="Training data")
    training.get_by_text(re.compile(r"\d+ training rows · sources: self \d+")).first.wait_for()
    with page.expect_download(timeout=60_000) as download_info:
        training.get_by_role("button", name="Download the training rows (JSONL, chat format)").click()
    jsonl = tmp_path / "rows.jsonl"
    download_info.value.save_as(jsonl)
    lines = jsonl.read_text().splitlines()
    assert lines and all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in lines)

    # the report: download, then open from disk with no server
    page.get_by_role("tab", name="Export").click()
    button = page.get_by_role("button", name="Download report (.html)")
    button.wait_for()
    _wait_idle(page)  # a click during a rerun (the matrix selection reruns the page) can hit a replaced button
    with page.expect_download(timeout=120_000) as download_info:
        button.click()
    report = tmp_path / "report.html"
    download_info.value.save_as(report)
    offline = page.context.new_page()
    requests: list[str] = []
    offline.on("request", lambda r: requests.append(r.url))
    offline.goto(report.as_uri())
    offline.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    assert offline.locator("#matrix tbody tr").count() == columns[0].examples
    offline.select_option("#m-filter", "changed")
    assert offline.locator("#matrix tbody tr").count() == changed.total
    assert all(url.startswith("file://") for url in requests), requests
    offline.screenshot(path=str(screenshots / "evidence-report.png"), full_page=True)
    offline.close()
