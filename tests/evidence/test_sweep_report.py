"""The sweep's shareable report: written by ``python -m core sweep-report``, self-contained, with the verdict,
the table in the paper's form (the best of each column in bold), the chart, time and cost, the examples where two
strategies differ; and no API key, typed in the app or read from the environment."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from core.cli import main
from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.evidence.sweep_report import build_sweep_report, table_html
from core.paths import db_path
from core.run.sweep import get_sweep_manager
from core.store import Store
from core.store.records import RunStatus
from core.views.sweep import pair_counts, paired_examples, paper_table, verdicts

TYPED_KEY = "sk-proj-canarySweepReport0123456789"
ENV_KEY = "canary-sweep-env-value-9a8b7c6d5e"


@pytest.fixture
def sweep_id(monkeypatch: pytest.MonkeyPatch) -> int:
    """A finished scripted sweep (p and p -> w, seeds 0 and 1) whose config holds a hosted LM with a key from the
    environment and a key typed in the app (no predictor calls it)."""
    monkeypatch.setenv("STUDIO_SWEEP_CANARY", ENV_KEY)
    doc = scripted_config_dict("classifier", tag="sweep-report")
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/gpt-4o-mini", "api_key_env": "STUDIO_SWEEP_CANARY"}
    doc["lms"]["typed"] = {"kind": "litellm", "model": "openai/gpt-4o-mini"}
    doc["sweep"] = {"strategies": ["p", "p -> w"], "seeds": [0, 1]}  # one run per seed holds both
    sweeps = get_sweep_manager(db_path())
    sweep = sweeps.start(parse_config(doc).with_api_keys({"typed": TYPED_KEY}))
    assert sweeps.wait(sweep, timeout=180)
    assert sweeps.store.get_sweep(sweep).status is RunStatus.FINISHED
    return sweep


def test_the_cli_writes_the_sweep_report_with_its_verdict_table_chart_examples_and_no_key(
        sweep_id: int, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "sweep.html"
    assert main(["sweep-report", str(sweep_id), str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"sweep_id": sweep_id, "report": str(out)}
    text = out.read_text(encoding="utf-8")
    assert "<script src=" not in text and 'src="http' not in text and text.count("Plotly.newPlot") == 1
    for section in ("Verdict", "Test score per strategy and seed", "Time and cost per strategy", "Example by example",
                    "Runs", "Configuration"):
        assert f">{section}</h2>" in text
    store = Store(db_path())
    summary = store.get_sweep(sweep_id).summary
    table = table_html(paper_table(summary))
    assert table in text and "<b>" in table
    best = summary.result(summary.best)
    assert f"<td><b>{best.mean:.1f}" in table  # the best mean, in bold
    for verdict in verdicts(summary):
        assert html.escape(verdict.text) in text
    comparison = summary.comparisons[0]
    counts = pair_counts(paired_examples(store, summary, comparison.a, comparison.b))
    assert f"{counts['win']} A wins, {counts['loss']} B wins, {counts['tie']} ties" in text
    assert text.count("<td class='pass'>A wins</td>") == counts["win"]
    assert text.count("<td class='fail'>B wins</td>") == counts["loss"]
    assert main(["sweep-report", str(sweep_id), str(tmp_path / "sweep.txt")]) == 2
    assert "ending in .html" in capsys.readouterr().err
    assert main(["sweep-report", "999", str(out)]) == 2
    assert "no sweep with id 999" in capsys.readouterr().err
    written = re.compile(r"report written [0-9T:-]+")
    assert written.sub("", build_sweep_report(store, sweep_id)) == written.sub("", text)  # the page's download
    # no API key, typed in the app or read from the environment, reaches the report or the store
    stored = b"".join(p.read_bytes() for p in db_path().parent.glob(f"{db_path().name}*"))
    for key in (TYPED_KEY, ENV_KEY):
        assert key not in text
        assert key.encode() not in stored
    assert html.escape('"api_key_env": "STUDIO_SWEEP_CANARY"') in text  # the variable's name, never its value
