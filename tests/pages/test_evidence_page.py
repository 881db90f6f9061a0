"""AppTest of the Results page's evidence tabs: matrix filters and paging, the trace, diffs, training rows;
and a run recorded without evidence still renders."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config.defaults import scripted_config
from core.config.schema import parse_config
from core.paths import db_path
from core.run import get_manager
from core.store.evidence import MatrixQuery, list_evaluations, matrix_page
from core.store.records import RunOutcome, RunStatus
from tests.evidence_helpers import scripted_evidence_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _open(run_id: int) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "results.py"), default_timeout=60)
    at.query_params["run"] = str(run_id)
    at.run()
    assert not at.exception, at.exception
    return at


def _select(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


def test_evidence_tabs_of_a_scripted_run():
    doc = scripted_evidence_config()
    manager = get_manager(db_path())
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, 120)
    store = manager.store
    last = len(list_evaluations(store, run_id, "val")) - 1
    changed = matrix_page(store, run_id, MatrixQuery(filter="changed", a=0, b=last), limit=500).rows

    at = _open(run_id)
    matrix = next(d.value for d in at.dataframe if "r0 baseline" in d.value.columns)
    assert list(matrix["example"]) == list(range(16))
    assert set(matrix["r0 baseline"].map(lambda v: v[0])) <= {"✓", "✗"}
    _select(at, "Show").set_value("changed").run()
    assert not at.exception
    matrix = next(d.value for d in at.dataframe if "r0 baseline" in d.value.columns)
    assert list(matrix["example"]) == [r.example_index for r in changed]
    assert _select(at, "Trace of example").options == [str(r.example_index) for r in changed]
    assert any(m.value.startswith(f"#### Trace: example {changed[0].example_index} in r{last}") for m in at.markdown)
    assert [e.label.split(" · ")[0] for e in at.expander][:2] == ["1. analyze.predict", "2. classify"]
    # another example and column: the trace follows
    _select(at, "Trace of example").set_value(changed[-1].example_index).run()
    _select(at, "In").set_value(0).run()
    assert any(m.value.startswith(f"#### Trace: example {changed[-1].example_index} in r0 baseline")
               for m in at.markdown)
    # search narrows the matrix
    word = matrix["inputs"].iloc[0].split()[0]
    next(t for t in at.text_input if t.label == "Search inputs, gold, outputs").set_value(word).run()
    assert not at.exception
    # diffs and training rows render
    assert any("(fine-tuned)" in c.value for c in at.caption)
    assert any(c.value.startswith(f"{n} training rows") for c in at.caption
               for n in [store.latest_event(run_id, "traces").data["rows"]["scripted/small"]])
    assert any("sources: self " in c.value and "(the program's own traces that passed the metric)" in c.value
               for c in at.caption)
    assert any(b.label == "Download the training rows (JSONL, chat format)" for b in at.get("download_button"))
    assert any(b.label == "Download report (.html)" for b in at.get("download_button"))
    assert not at.error


def test_a_run_without_evidence_still_renders():
    manager = get_manager(db_path())
    store = manager.store
    run_id = store.create_run("old run", scripted_config(), RunStatus.RUNNING)
    store.finish_run(run_id, RunOutcome(RunStatus.FINISHED, best_strategy="", best_score=None, baseline_score=None,
                     test_baseline_score=None, test_best_score=None, flagged=False))
    at = _open(run_id)
    assert any("no per-example results" in i.value for i in at.info)
    assert any("Diffs need two recorded rounds" in i.value for i in at.info)
    assert any("No weight step of this run recorded training rows" in i.value for i in at.info)
