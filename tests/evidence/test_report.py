"""The shareable report: written by ``python -m core report``, self-contained (no network, no server),
and rendered in headless Chromium from a file:// URL: charts, tables, diffs and a working matrix."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from core.cli import main
from core.config.schema import parse_config
from core.evidence.report import build_report, without_secrets, write_report
from core.paths import db_path
from core.run import get_manager
from core.store.evidence import MatrixQuery, list_evaluations, matrix_page
from core.store.records import RunStatus
from tests.evidence_helpers import scripted_evidence_config

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def run_id(studio_home: Path) -> int:
    doc = scripted_evidence_config()
    manager = get_manager(db_path())
    run = manager.start(parse_config(doc))
    assert manager.wait(run, 120)
    assert manager.store.get_run(run).status is RunStatus.FINISHED
    return run


def test_cli_writes_a_self_contained_report(run_id: int, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "report.html"
    assert main(["report", str(run_id), str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"run_id": run_id, "report": str(out)}
    text = out.read_text(encoding="utf-8")
    assert text.count("<script") >= 2 and "<script src=" not in text and 'src="http' not in text
    assert text.count("Plotly.newPlot") >= 2
    for section in ("Scores", "Charts", "What changed between rounds", "What the weight steps trained on",
                    "Examples", "Configuration"):
        assert f">{section}</h2>" in text
    assert re.search(r"training rows · sources self \d+ \(the program&#x27;s own traces that passed the metric\)", text)
    assert main(["report", str(run_id), str(tmp_path / "report.txt")]) == 2
    assert "ending in .html" in capsys.readouterr().err
    assert main(["report", "999", str(out)]) == 2


def test_config_secrets_are_masked():
    config = {"lms": {"a": {"api_key": "sk-typed", "api_key_env": "OPENAI_API_KEY", "max_tokens": 5}}}
    assert without_secrets(config) == {"lms": {"a": {"api_key": "***", "api_key_env": "OPENAI_API_KEY",
                                                     "max_tokens": 5}}}


@pytest.mark.e2e
def test_report_renders_offline_in_chromium(run_id: int, tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: run `make chromium`")
    from playwright.sync_api import sync_playwright

    from core.store import Store

    store = Store(db_path())
    out = write_report(store, run_id, tmp_path / "report.html")
    val = list_evaluations(store, run_id, "val")
    changed = matrix_page(store, run_id, MatrixQuery(filter="changed", a=0, b=len(val) - 1), limit=500).total
    total = val[0].examples
    requests: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
            assert page.locator(".js-plotly-plot").count() >= 2
            assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 1
            assert page.locator("table").first.locator("tbody tr").count() == 2  # validation / test scores
            rounds = page.locator("h3", has_text="Rounds").locator("xpath=following-sibling::table[1]")
            assert rounds.locator("tbody tr").count() == len(val)
            assert page.locator("#matrix tbody tr").count() == total
            page.select_option("#m-filter", "changed")
            assert page.locator("#matrix tbody tr").count() == changed
            page.select_option("#m-filter", "all")
            word = page.locator("#matrix tbody tr").first.locator("td").nth(1).inner_text().split()[0]
            page.fill("#m-search", word)
            assert 1 <= page.locator("#matrix tbody tr").count() <= total
            page.locator("#matrix tbody tr").first.click()
            assert "Example" in page.locator("#m-detail h3").inner_text()
            assert page.locator("#m-detail tr").count() == len(val) + 1
            page.fill("#m-search", "")
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert requests and all(url.startswith("file://") for url in requests), requests
    assert "scripted/small:ft-" in build_report(store, run_id)


def test_the_export_bundle_carries_the_report(run_id: int, tmp_path: Path):
    import zipfile

    from core.bundles.export import export_run
    from core.store import Store

    out = export_run(Store(db_path()), run_id, tmp_path / "bundle.zip")
    with zipfile.ZipFile(out) as zf:
        report = zf.read("report.html").decode("utf-8")
    assert f"Run #{run_id}" in report and 'id="matrix-data"' in report
