"""AppTest of a sweep in the browser: turned on and estimated on the Strategy page, started, watched, cancelled
and resumed on the Run page (the keys typed in the app reach every child run, never the store), and read on the
Results page's Sweep view (the table with the best of each column in bold, the verdict, the chart, the matrix)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from core.config.defaults import scripted_config_dict
from core.config.schema import RunDraft, parse_config
from core.document import add_litellm, draft_of, set_sweep
from core.paths import db_path
from core.run.executors import LocalExecutor
from core.run.sweep import get_sweep_manager
from core.store.records import RunStatus
from core.views.sweep import verdicts

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-canary-sweep-pages-0123456789"


@pytest.fixture(autouse=True)
def _cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _draft(**options: Any) -> RunDraft:
    """The scripted classifier, with a hosted LM that no predictor uses: only its typed key travels."""
    draft = draft_of(parse_config(scripted_config_dict("classifier", tag="sweep-pages", **options)))
    return add_litellm(draft, "hosted", {"model": "openai/gpt-4o-mini"})


def _open(page: str, draft: RunDraft | None = None, **query: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=60)
    if draft is not None:
        at.session_state["config_doc"] = draft
        at.session_state["doc_rev"] = 0
        at.session_state["api_keys"] = {"hosted": KEY}
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> str | None:
    return next((m.value for m in at.metric if m.label == label), None)


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label.startswith(label))


def test_the_strategy_page_turns_a_sweep_on_picks_strategies_and_seeds_and_estimates_the_whole_sweep():
    at = _open("strategy", _draft())
    assert _metric(at, "Runs") is None and _metric(at, "LM calls") is not None
    next(t for t in at.toggle if t.label.startswith("Compare strategies")).set_value(True).run()
    sweep = at.session_state["config_doc"].sweep
    assert (sweep.strategies, sweep.seeds) == (["p", "p -> w", "p -> w -> p"], [0, 1, 2])
    assert _metric(at, "Runs") == "3"  # one p -> w -> p run per seed holds the three strategies
    assert any(c.value.startswith("Prefix sharing: 3 runs instead of 9 separate runs") for c in at.caption)
    assert [r for r in at.dataframe[0].value["reads"]] == ["p, p -> w, p -> w -> p"] * 3

    next(m for m in at.multiselect if m.label == "Strategies to compare").set_value(["p", "w"]).run()
    next(n for n in at.number_input if n.label == "Seeds per strategy").set_value(2).run()
    sweep = at.session_state["config_doc"].sweep
    assert (sweep.strategies, sweep.seeds) == (["p", "w"], [0, 1])
    assert _metric(at, "Runs") == "4" and any(c.value == "seeds 0, 1" for c in at.caption)
    assert list(at.dataframe[0].value["baseline"]) == ["evaluated", "reused"] * 2

    typed = next(t for t in at.text_input if t.label == "...or add a composed strategy")
    typed.set_value("w -> q").run()
    assert any("Unknown step 'q'" in e.value for e in at.error)
    assert at.session_state["config_doc"].sweep.strategies == ["p", "w"]
    next(t for t in at.text_input if t.label == "...or add a composed strategy").set_value("W->P").run()
    assert at.session_state["config_doc"].sweep.strategies == ["p", "w", "w -> p"]
    assert not at.error

    next(t for t in at.toggle if t.label.startswith("Compare strategies")).set_value(False).run()
    assert at.session_state["config_doc"].sweep is None
    assert _metric(at, "Runs") is None and _metric(at, "LM calls") is not None


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """The paper table's rows by strategy: its cells as written (bold kept)."""
    rows = {}
    for line in markdown.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("*`")] = cells[1:]
    return rows


def _record_keys(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The typed API keys of each child run handed to the executor, in order."""
    submitted: list[dict[str, str]] = []
    submit = LocalExecutor.submit

    def recording(self, run_id, plan, *, resume):
        submitted.append(plan.config.typed_api_keys())
        return submit(self, run_id, plan, resume=resume)

    monkeypatch.setattr(LocalExecutor, "submit", recording)
    return submitted


def test_a_sweep_started_on_the_run_page_is_watched_and_read_on_the_results_page(monkeypatch: pytest.MonkeyPatch):
    submitted = _record_keys(monkeypatch)
    at = _open("run", set_sweep(_draft(), ["p", "w"], [0, 1]))
    assert any("**Sweep** `p`, `w` x seeds 0, 1" in m.value for m in at.markdown)
    _button(at, "Start sweep").click().run()
    assert not at.exception and not at.error
    sweeps = get_sweep_manager(db_path())
    sweep_id = sweeps.store.list_sweeps()[0].id
    assert sweeps.wait(sweep_id, timeout=180)
    sweep = sweeps.store.get_sweep(sweep_id)
    assert sweep.status is RunStatus.FINISHED, sweep.error
    assert submitted == [{"hosted": KEY}] * 4  # the key typed in the app reached every child run
    assert not any(KEY.encode() in p.read_bytes() for p in db_path().parent.glob(f"{db_path().name}*"))

    at.run()
    assert not at.exception
    assert any(m.value.endswith(f"Sweep #{sweep_id}: finished") for m in at.markdown)
    children = next(d.value for d in at.dataframe if "reads" in d.value.columns)
    assert list(children["status"]) == ["finished"] * 4 and list(children["strategy"]) == ["p", "w", "p", "w"]
    summary = sweep.summary
    said = [*(s.value for s in at.success), *(i.value for i in at.info)]
    assert all(v.text in said for v in verdicts(summary))

    results = _open("results", sweep=str(sweep_id))
    assert not results.error
    assert next(r for r in results.radio if r.label == "View").value == "Sweeps"
    table = next(m.value for m in results.markdown if m.value.startswith("| strategy | seed 0 | seed 1 | mean ± sd |"))
    rows = _table_rows(table)
    assert set(rows) == {"p", "w"}
    for column, seed in enumerate(summary.seeds):  # the best of each seed's column in bold, the other not
        scores = {r.strategy: r.seeds[column].test_score for r in summary.results}
        best = max(scores.values())
        for strategy, score in scores.items():
            assert rows[strategy][column] == (f"**{score:.1f}**" if score == best else f"{score:.1f}"), (seed, rows)
    best_mean = max(r.mean for r in summary.results)
    assert [rows[r.strategy][-1].startswith("**") for r in summary.results] == [
        r.mean == best_mean for r in summary.results]
    said = [*(s.value for s in results.success), *(i.value for i in results.info)]
    headline = verdicts(summary)[0].text
    assert headline in said and re.match(r"Highest mean test score: '(p|w)', \d+\.\d", headline)
    assert summary.comparisons[0].sentence + "." in said
    assert len(results.get("plotly_chart")) == 1
    matrix = next(d.value for d in results.dataframe if "outcome" in d.value.columns)
    a, b = summary.best, next(s for s in summary.strategies if s != summary.best)
    assert list(matrix.columns) == ["seed", "example", f"A: {a}", f"B: {b}", "outcome", "inputs", "gold"]
    comparison = summary.comparisons[0]
    assert len(matrix) == comparison.wins + comparison.losses
    assert set(matrix["outcome"]) <= {"A wins", "B wins"}
    next(r for r in results.radio if r.label == "Show" and "all paired examples" in r.options).set_value(
        "all paired examples").run()
    matrix = next(d.value for d in results.dataframe if "outcome" in d.value.columns)
    assert len(matrix) == comparison.pairs
    assert any(b.label == "Download sweep report (.html)" for b in results.get("download_button"))
    next(r for r in results.radio if r.label == "View").set_value("Runs").run()  # the sweep's runs are runs
    assert not results.exception and list(results.dataframe[0].value["status"]) == ["finished"] * 4


def test_a_sweep_is_cancelled_and_resumed_from_the_run_page(monkeypatch: pytest.MonkeyPatch):
    submitted = _record_keys(monkeypatch)
    at = _open("run", set_sweep(_draft(delay=0.01), ["p", "w"], [0, 1]))
    _button(at, "Start sweep").click().run()
    sweeps = get_sweep_manager(db_path())
    store = sweeps.store
    sweep_id = store.list_sweeps()[0].id
    at.run()
    assert any(m.value.endswith(f"Sweep #{sweep_id}: running") for m in at.markdown)
    _button(at, "Cancel sweep").click().run()
    assert sweeps.wait(sweep_id, timeout=120)
    sweep = store.get_sweep(sweep_id)
    assert sweep.status is RunStatus.CANCELLED
    started = [c.run_id for c in sweep.children if c.run_id is not None]
    assert len(started) < 4  # no run started after the cancel
    at.run()
    assert any(m.value.endswith(f"Sweep #{sweep_id}: cancelled") for m in at.markdown)
    assert any("cancelled by the user" in w.value for w in at.warning)
    _button(at, "Resume sweep").click().run()
    assert not at.exception
    assert sweeps.wait(sweep_id, timeout=180)
    sweep = store.get_sweep(sweep_id)
    assert sweep.status is RunStatus.FINISHED, sweep.error
    assert all(store.get_run(c.run_id).status is RunStatus.FINISHED for c in sweep.children)
    assert len(submitted) >= 4 and all(keys == {"hosted": KEY} for keys in submitted)  # resumed runs too
    at.run()
    assert any(m.value.endswith(f"Sweep #{sweep_id}: finished") for m in at.markdown)
