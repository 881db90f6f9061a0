"""Per-example evidence of a run on the scripted LM: the matrix shows exactly the examples whose result
changed (checked against re-running each round's saved program), the traces hold every module's
prompt and answer in pipeline order, the diffs and the training rows are the known ones, old runs
still open, and a canary API key reaches no trace, report or JSONL."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from core.bundles.saved import load_saved_program, run_label_choices, run_weights
from core.config.defaults import scripted_config, scripted_config_dict
from core.config.schema import parse_config
from core.evidence.diff import round_diff, word_diff
from core.evidence.report import build_report
from core.lms.scripted import row_from_messages
from core.paths import db_path, run_dir
from core.plan.prepare import prepare_run
from core.run import execute_run, get_manager
from core.store import Store
from core.store.evidence import (
    MatrixQuery,
    example_trace,
    iter_training_rows,
    label_distribution,
    list_evaluations,
    matrix_page,
    training_jsonl,
    training_rows_page,
    training_sets,
)
from core.store.records import RunStatus

CANARY = "sk-CANARY-evidence-4d1e-never-store-me"


def _doc(**options) -> dict:
    doc = scripted_config_dict("analyze_classify", **options)
    doc["data"]["split"] = {"train": 24, "val": 16, "test": 12, "seed": 0}
    doc["strategy"] = "p -> w"
    doc["optimizers"] = {
        "p": {"type": "random_search",
              "settings": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2, "num_candidate_programs": 2}},
        "w": {"type": "finetune", "settings": {"epochs": 1, "batch_size": 8, "min_score": 1.0, "trace_source": "self"}},
    }
    return doc


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    """One scripted ``p -> w`` run in its own STUDIO_HOME; yields (store, run_id, prepared split)."""
    home = tmp_path_factory.mktemp("evidence-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("STUDIO_HOME", str(home))
    manager = get_manager(home / "studio.db")
    config = parse_config(_doc())
    run_id = manager.start(config)
    assert manager.wait(run_id, 120)
    store = manager.store
    assert store.get_run(run_id).status is RunStatus.FINISHED, store.get_run(run_id).error
    yield store, run_id, prepare_run(config).split, home
    patch.undo()


def _passes(store: Store, run_id: int, round_index: int, valset: list, metric) -> list[bool]:
    """Re-run round ``round_index``'s saved program on the valset: which examples get full marks."""
    run = store.get_run(run_id)
    path = next(a.path for a in store.list_artifacts(run_id, "round_program") if a.meta["index"] == round_index)
    program = load_saved_program(run.config, path, run_weights(store, run_id), run_label_choices(store, run_id))
    return [metric(ex, program(**ex.inputs())) >= 1.0 for ex in valset]


def test_matrix_shows_exactly_the_examples_that_changed(finished):
    store, run_id, split, _ = finished
    columns = list_evaluations(store, run_id, "val")
    assert [c.round_index for c in columns] == [0, 1, 2]
    assert [c.label for c in columns] == ["baseline", "p", "p -> w"]
    assert all(c.examples == len(split.val) for c in columns)
    from core.programs.metrics import make_metric

    metric = make_metric("exact_match", ["category", "risk_level"])
    truth = {c.round_index: _passes(store, run_id, c.round_index, list(split.val), metric) for c in columns}
    page = matrix_page(store, run_id, MatrixQuery(), limit=500)
    assert page.total == len(split.val)
    for position, column in enumerate(columns):
        assert [row.cells[position].passed for row in page.rows] == truth[column.round_index]
        rounds = {r.index: r for r in store.list_rounds(run_id)}
        assert column.score == pytest.approx(rounds[column.round_index].score)

    def indices(query: MatrixQuery) -> set[int]:
        return {r.example_index for r in matrix_page(store, run_id, query, limit=500).rows}

    base, last = truth[0], truth[2]
    changed = {i for i in range(len(base)) if base[i] != last[i]}
    assert changed, "the weight step should change some examples (else the test proves nothing)"
    assert indices(MatrixQuery(filter="changed", a=0, b=2)) == changed
    assert indices(MatrixQuery(filter="regressions", b=2)) == {i for i in changed if base[i]}
    assert indices(MatrixQuery(filter="still_failing", b=2)) == {i for i in range(len(base)) if not base[i] and not last[i]}
    assert indices(MatrixQuery(filter="errors")) == set()
    # paging: two pages of 10 cover the rows once, in order
    first = matrix_page(store, run_id, MatrixQuery(), limit=10, offset=0).rows
    second = matrix_page(store, run_id, MatrixQuery(), limit=10, offset=10).rows
    assert [r.example_index for r in first + second] == list(range(len(split.val)))
    # search finds the example whose document holds a word, and only those
    word = split.val[3]["document"].split()[0]
    found = indices(MatrixQuery(search=word))
    assert 3 in found and all(word.lower() in split.val[i]["document"].lower() for i in found)


def test_trace_holds_each_module_prompt_and_answer_in_pipeline_order(finished):
    store, run_id, split, _ = finished
    columns = list_evaluations(store, run_id, "val")
    rounds = {r.index: r for r in store.list_rounds(run_id)}
    for column in columns:
        result = example_trace(store, column.id, 0)
        assert result.inputs == dict(split.val[0].inputs())
        assert result.gold == {"category": split.val[0]["category"], "risk_level": split.val[0]["risk_level"]}
        assert [c.predictor for c in result.calls] == ["analyze.predict", "classify"]
        assert [c.model for c in result.calls] == [rounds[column.round_index].predictor_models[c.predictor]
                                                   for c in result.calls]
        classify = result.calls[1]
        assert classify.messages[0]["role"] == "system" and classify.messages[-1]["role"] == "user"
        assert f"[[ ## category ## ]]\n{result.outputs['category']}" in classify.completion
        assert classify.input_tokens > 0 and classify.output_tokens > 0 and classify.latency_ms >= 0
        # the second module was prompted with what the first one answered
        assert result.outputs["analysis"][:40] in classify.messages[-1]["content"]


def test_test_evaluations_are_recorded(finished):
    store, run_id, split, _ = finished
    run = store.get_run(run_id)
    tests = list_evaluations(store, run_id, "test")
    assert tests[0].label == "test: baseline" and tests[0].score == pytest.approx(run.test_baseline_score)
    assert all(t.examples == len(split.test) for t in tests)
    assert matrix_page(store, run_id, MatrixQuery(split="test"), limit=500).total == len(split.test)


def test_known_diffs_between_rounds(finished):
    store, run_id, _, _ = finished
    rounds = store.list_rounds(run_id)
    finetuned = [e.data for e in store.list_events(run_id, kinds=["finetuned"])]
    assert len(finetuned) == 1
    by_name = {d.name: d for d in round_diff(store, run_id, 1, 2)}
    assert by_name["classify"].model_a == "scripted/small" and by_name["classify"].served_a == "base"
    assert by_name["classify"].model_b == finetuned[0]["model"] and by_name["classify"].served_b == "fine-tuned"
    assert by_name["analyze.predict"].model_b == "scripted/large" and by_name["analyze.predict"].served_b == "base"
    assert not any(d.instructions_changed for d in by_name.values())  # random search keeps instructions
    for a, b in ((0, 1), (1, 2)):
        for d in round_diff(store, run_id, a, b):
            assert len(d.demos_added) + len(d.demos_kept) == rounds[b].demos[d.name]
            assert len(d.demos_removed) + len(d.demos_kept) == rounds[a].demos[d.name]


def test_word_diff_marks_changed_words_only():
    ops = word_diff("Classify the ticket by intent.", "Classify each support ticket by intent.")
    assert [(o.op, o.text) for o in ops if o.op != "equal"] == [("delete", "the"), ("insert", "each support")]
    assert "".join(o.text for o in ops if o.op != "delete") == "Classify each support ticket by intent."


def test_known_training_rows(finished):
    store, run_id, _, _ = finished
    sets = training_sets(store, run_id)
    assert [(s.round_index, s.model, s.sources) for s in sets] == [(2, "scripted/small", {"self": sets[0].rows})]
    traces = store.latest_event(run_id, "traces").data
    assert sets[0].rows == traces["rows"]["scripted/small"] > 0
    # the rows recorded are exactly those the provider was given (its saved copy)
    folder = Path(store.list_artifacts(run_id, "weights")[0].path)
    trained = json.loads((folder / "rows.json").read_text())
    recorded = list(iter_training_rows(store, run_id, 2, "scripted/small"))
    assert [row_from_messages(r.messages) for r in recorded] == [(t["inputs"], t["outputs"]) for t in trained]
    assert all(r.predictor == "classify" and r.source == "self" for r in recorded)
    assert all(r.outputs["category"] in r.messages[-1]["content"] for r in recorded)
    # JSONL in the chat format, one row per line
    lines = training_jsonl(store, run_id, 2, "scripted/small").splitlines()
    assert [json.loads(line)["messages"] for line in lines] == [r.messages for r in recorded]
    # label distribution counts the outputs
    distribution = label_distribution(store, run_id, 2, "scripted/small")
    assert sum(distribution["category"].values()) == len(recorded)
    assert distribution["category"] == {v: sum(r.outputs["category"] == v for r in recorded)
                                        for v in {r.outputs["category"] for r in recorded}}
    # paging and search
    page, total = training_rows_page(store, run_id, 2, "scripted/small", limit=3, offset=0)
    assert total == len(recorded) and [r.index for r in page] == [0, 1, 2]
    label = recorded[0].outputs["category"]
    _, hits = training_rows_page(store, run_id, 2, "scripted/small", search=label)
    assert 0 < hits <= total


def test_parse_errors_are_recorded_and_filtered(studio_home: Path):
    manager = get_manager(db_path())
    doc = _doc(garble_every=7)
    doc["strategy"] = "p"
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, 120)
    store = manager.store
    page = matrix_page(store, run_id, MatrixQuery(filter="errors"), limit=500)
    assert page.total > 0
    columns = page.columns
    for row in page.rows:
        position = next(i for i, c in enumerate(row.cells) if c is not None and c.error_kind)
        assert row.cells[position].error_kind == "parse" and row.cells[position].passed is False
        trace = example_trace(store, columns[position].id, row.example_index)
        assert "AdapterParseError" in trace.error
        assert any("Sure! Here is my answer" in (c.completion or "") for c in trace.calls)


def test_old_runs_without_evidence_still_open(studio_home: Path):
    path = studio_home / "old.db"
    store = Store(path)
    run_id = store.create_run("old", scripted_config())
    conn = sqlite3.connect(path)  # make it a database from before the migration
    for table in ("lm_calls", "example_results", "evaluations", "training_rows"):
        conn.execute(f"drop table {table}")
    conn.execute("delete from _sqlite_migrations where name = 'm003_evidence'")
    conn.commit()
    conn.close()
    reopened = Store(path)
    assert "m003_evidence" in reopened.applied_migrations()
    assert reopened.get_run(run_id).name == "old"
    assert list_evaluations(reopened, run_id) == [] and training_sets(reopened, run_id) == []
    assert matrix_page(reopened, run_id, MatrixQuery()).total == 0
    assert "no per-example evidence" in build_report(reopened, run_id)
    reopened.delete_run(run_id)


def test_deleting_a_run_deletes_its_evidence(finished, tmp_path: Path):
    store, run_id, _, home = finished
    copy = tmp_path / "copy.db"
    with sqlite3.connect(home / "studio.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    other = Store(copy)
    other.delete_run(run_id)
    with sqlite3.connect(copy) as conn:
        for table in ("evaluations", "example_results", "lm_calls", "training_rows"):
            assert conn.execute(f"select count(*) from {table}").fetchone()[0] == 0


def test_canary_key_reaches_no_trace_report_or_jsonl(studio_home: Path, monkeypatch: pytest.MonkeyPatch):
    """The large LM carries an API key (as a hosted LM does) and the key is in the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    config = parse_config(_doc())
    prepared = prepare_run(config)
    prepared.lms["large"].kwargs["api_key"] = CANARY  # the prompted role, as a hosted LM with its key
    store = Store(db_path())
    run_id = store.create_run(config.name, config, RunStatus.RUNNING)
    outcome = execute_run(prepared, store, run_id, threading.Event())
    assert outcome.status is RunStatus.FINISHED, outcome.error
    assert list_evaluations(store, run_id) and training_sets(store, run_id)
    report = build_report(store, run_id)
    assert "Examples" in report and CANARY not in report
    for s in training_sets(store, run_id):
        assert CANARY not in training_jsonl(store, run_id, s.round_index, s.model)
    for evaluation in list_evaluations(store, run_id):
        for index in range(evaluation.examples):
            trace = example_trace(store, evaluation.id, index)
            assert CANARY not in json.dumps([c.__dict__ for c in trace.calls], default=str)
    store.close()
    for file in [db_path(), *db_path().parent.glob("studio.db*")]:
        assert CANARY.encode() not in Path(file).read_bytes(), f"the key leaked into {file}"
    assert run_dir(run_id).is_dir()
