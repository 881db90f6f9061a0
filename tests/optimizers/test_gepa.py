"""The ``gepa`` prompt step (DSPy's GEPA) on the scripted LM: its settings, budget and estimate, the feedback
metric, a scripted reflection that proposes a known instruction, per-predictor LMs, progress, evidence, cancel."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import dspy
import pytest

from core.config.defaults import default_config_dict, scripted_config_dict
from core.config.schema import parse_config
from core.config.steps import GepaSettings
from core.document import add_optimizer, draft_of, new_document, setting_options, settings_fields
from core.errors import ConfigError
from core.evidence.diff import proposed_candidates
from core.evidence.report import build_report
from core.optimizers.entry import EstimateContext
from core.optimizers.gepa import (
    AUTO_CANDIDATES,
    FeedbackMetric,
    budget_calls,
    estimate,
    gepa_auto_budget,
    reflection_warning,
)
from core.optimizers.table import step_warnings
from core.paths import db_path
from core.programs.metrics import make_metric
from core.run import RunManager, get_manager
from core.store import Store
from core.store.records import RunStatus
from core.views.monitor import run_snapshot
from tests.compile_helpers import compile_recorded

ROOT = Path(__file__).resolve().parents[2]
KNOWN = "Label by the sentiment words."
# The scripted task LM follows KNOWN: with it in its instructions, these words decide the label.
FOLLOWS = {KNOWN: {**{w: {"label": "negative"} for w in ("worst", "unhappy", "terrible", "regret", "disappointment",
                                                         "returning")},
                   **{w: {"label": "positive"} for w in ("best", "excellent", "love")},
                   **{w: {"label": "neutral"} for w in ("average", "ordinary", "fine")}}}


def gepa_doc(template: str = "classifier", tag: str = "gepa", proposal: str | None = KNOWN,
             settings: dict | None = None, **options) -> dict:
    """A scripted run of one ``g`` GEPA step; with ``proposal``, a third LM ``reflect`` reflects and always
    proposes that instruction (its hint: the word 'feedback', which every reflection prompt holds)."""
    doc = scripted_config_dict(template, tag=tag, **options)
    if proposal is not None:
        doc["lms"]["reflect"] = {"kind": "factory", "factory": "core.lms.scripted:make_lm",
                                 "options": {"name": "reflect", "tag": tag,
                                             "hints": {"feedback": {"new_instruction": proposal}}}}
    doc["optimizers"] = {"g": {"type": "gepa", "settings": {
        "max_metric_calls": 60, **({"reflection_lm": "reflect"} if proposal is not None else {}), **(settings or {})}}}
    doc["strategy"] = "g"
    return doc


# --- settings, budget, estimate, Strategy page ------------------------------------------------------


def test_empty_settings_are_valid_and_mean_the_light_budget_on_the_large_role_lm() -> None:
    config = parse_config({**gepa_doc(proposal=None), "optimizers": {"g": {"type": "gepa"}}})
    settings = config.optimizers["g"].settings
    assert isinstance(settings, GepaSettings) and settings.model_fields_set == set()
    assert settings.budget == ("auto", "light")
    assert (settings.reflection_lm, settings.reflection_minibatch_size, settings.use_merge) == (None, 3, True)
    assert config.step_kind("g") == "prompt"
    for preset in ("light", "medium", "heavy"):
        assert GepaSettings(auto=preset).budget == ("auto", preset)
    assert GepaSettings(max_metric_calls=120).budget == ("max_metric_calls", 120)


@pytest.mark.parametrize(("settings", "message"), [
    ({"auto": "light", "max_metric_calls": 50},
     "set one budget, auto ('light') or max_metric_calls (50), not both; with neither, auto is 'light'"),
    ({"auto": "huge"}, "optimizers.g.gepa.settings.auto: Input should be 'light', 'medium' or 'heavy'"),
    ({"max_metric_calls": 0}, "optimizers.g.gepa.settings.max_metric_calls: Input should be greater than or equal to 1"),
    ({"reflection_lm": "judge"}, "step 'g': reflection_lm 'judge' is not defined; defined LMs: ['large', 'small']"),
])
def test_bad_settings_are_refused_naming_what_is_allowed(settings: dict, message: str) -> None:
    doc = gepa_doc(proposal=None)
    doc["optimizers"]["g"]["settings"] = settings
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    assert message in str(caught.value), str(caught.value)


def test_auto_budget_is_dspys_and_the_estimate_prices_the_budget() -> None:
    for preds in (1, 2, 3):
        for preset, n in AUTO_CANDIDATES.items():
            for val in (3, 10, 20, 60):
                assert gepa_auto_budget(preds, n, val) == dspy.GEPA.auto_budget(None, preds, n, val), (preds, preset)
                assert dspy.teleprompt.gepa.gepa.AUTO_RUN_SETTINGS[preset]["n"] == n
    assert budget_calls(GepaSettings(), 1, 20) == 460  # light: 20 + 6 x 5 + 10 x 35 + 3 x 20
    assert budget_calls(GepaSettings(max_metric_calls=90), 2, 20) == 90
    ctx = EstimateContext(predictors=2, train=40, val=20, labelled=1, cached=False, prompted=False, export_seconds=0)
    cost = estimate(GepaSettings(max_metric_calls=90), ctx)
    assert (cost.calls, cost.cached) == (90 * 2 + (90 - 20) // 6 + 2 * 20, 0)
    assert estimate(GepaSettings(max_metric_calls=90), dataclasses.replace(ctx, cached=True)).cached == 80
    assert estimate(GepaSettings(auto="heavy"), ctx).calls > estimate(GepaSettings(), ctx).calls


def test_strategy_page_fields_and_the_tiny_reflection_warning() -> None:
    fields = {f.name: f for f in settings_fields("gepa")}
    assert list(fields) == ["auto", "max_metric_calls", "reflection_lm", "reflection_minibatch_size", "use_merge"]
    assert (fields["auto"].kind, fields["auto"].options) == ("optional_choice", ("light", "medium", "heavy"))
    assert fields["max_metric_calls"].kind == "optional_int"
    lm = fields["reflection_lm"]
    assert (lm.kind, lm.choices, lm.unset) == ("optional_choice", "lms", "large role")
    draft = draft_of(parse_config(gepa_doc()))
    assert setting_options(draft, lm) == ("large", "small", "reflect")
    assert reflection_warning(draft, draft.optimizers["g"].settings) is None  # scripted LMs
    embedded = default_config_dict("classifier")
    embedded["optimizers"]["g"] = {"type": "gepa"}
    draft = draft_of(parse_config(embedded))
    (warning,) = step_warnings(draft, "g")
    assert warning.startswith("The reflection LM 'large' (smollm2-135m) is a tiny embedded model")
    assert "SmolLM2-135M reflecting" in warning and "none was an instruction" in warning
    assert step_warnings(draft, "p") == [] and step_warnings(draft, "nope") == []


def test_the_strategy_page_shows_the_settings_and_warns_of_a_tiny_reflection_lm(monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.chdir(ROOT)
    draft = add_optimizer(new_document(), "g", "gepa")  # the default document: embedded models
    at = AppTest.from_file(str(ROOT / "pages" / "strategy.py"), default_timeout=60)
    at.session_state["config_doc"] = draft
    at.session_state["doc_rev"] = 0
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    widgets = {w.label: w for kind in ("number_input", "selectbox", "checkbox") for w in at.get(kind)
               if w.form_id == "settings_g_0"}
    assert set(widgets) == {"auto", "max_metric_calls", "reflection_lm", "reflection_minibatch_size", "use_merge"}
    assert widgets["auto"].options == ["(light unless max_metric_calls)", "light", "medium", "heavy"]
    assert widgets["reflection_lm"].options == ["(large role)", *draft.lms]
    assert any("is a tiny embedded model" in w.value for w in at.warning)


# --- the feedback metric ----------------------------------------------------------------------------


def test_feedback_names_the_wrong_label_field_with_expected_and_got() -> None:
    metric = FeedbackMetric(make_metric("exact_match", ["intent", "urgency"]))
    gold = dspy.Example(text="I was charged twice", intent="billing", urgency="high").with_inputs("text")
    wrong = dspy.Prediction(intent="bug", urgency="high")
    assert metric(gold, wrong) == 0.0  # scoring: the run's score, a float
    out = metric(gold, wrong, None, "classify", None)
    assert out.score == 0.0
    assert out.feedback == ("Score 0 of 1 (exact_match over intent, urgency). `intent` is wrong: expected 'billing', "
                            "got 'bug'. `urgency` is right: 'high'.")
    missing = metric(gold, dspy.Prediction(urgency="low"), None, "classify", None).feedback
    assert "`intent` is wrong: the answer has no `intent`; expected 'billing'." in missing
    assert "`urgency` is wrong: expected 'high', got 'low'." in missing
    f1 = FeedbackMetric(make_metric("token_f1", ["answer"]))
    gold = dspy.Example(q="?", answer="the big red dog").with_inputs("q")
    assert "`answer` is partly right (word-overlap F1 0.80): expected 'the big red dog', got 'a red dog'." in f1(
        gold, dspy.Prediction(answer="a red dog"), None, "p", None).feedback


def test_a_custom_metric_gives_its_score_as_feedback_and_keeps_its_own_feedback() -> None:
    def closeness(example, prediction, trace=None):
        return 0.25

    metric = FeedbackMetric(closeness)
    gold = dspy.Example(x="a", y="b").with_inputs("x")
    assert metric(gold, dspy.Prediction(y="c")) == 0.25
    assert metric(gold, dspy.Prediction(y="c"), None, "p", None).feedback == (
        "The run's metric closeness scored this answer 0.25 (1 is best).")

    def judged(example, prediction, trace=None, pred_name=None, pred_trace=None):
        return dspy.Prediction(score=0.5, feedback=f"too vague for {pred_name}")

    out = FeedbackMetric(judged)(gold, dspy.Prediction(y="c"), None, "p", None)
    assert (out.score, out.feedback) == (0.5, "too vague for p")
    assert FeedbackMetric(judged)(gold, dspy.Prediction(y="c")) == 0.5


# --- the step on the scripted LM --------------------------------------------------------------------


def test_a_better_proposed_instruction_is_kept_recorded_and_shown(tmp_path: Path) -> None:
    compiled = compile_recorded(parse_config(gepa_doc(tag="gepa-known", follows=FOLLOWS)), tmp_path)
    store, run_id = compiled.store, compiled.run_id
    baseline, step = store.list_rounds(run_id)
    assert step.strategy == "g" and step.optimizer == "gepa"
    assert step.instructions == {"classify": KNOWN}
    assert step.score > baseline.score
    assert step.lm_usage["scripted/reflect"]["calls"] >= 1  # the reflection LM proposed it
    # the round's evidence: the candidates with their validation scores, the kept one marked
    (event,) = store.list_events(run_id, kinds=["candidates"])
    kept = event.data["candidates"]
    assert event.data["strategy"] == "g" and event.data["best"] == 1
    assert [c["instructions"]["classify"] for c in kept] == [baseline.instructions["classify"], KNOWN]
    assert kept[0]["score"] == baseline.score and kept[1]["score"] == step.score
    tried = proposed_candidates(store, run_id, "g")
    assert tried[0].label == f"the step's starting program: {baseline.score:.1f} on validation"
    assert tried[1].label == f"candidate 1 (from 0): {step.score:.1f} on validation, kept"
    (name, words), = tried[1].changes
    assert name == "classify" and "".join(w.text for w in words if w.op != "delete") == KNOWN
    assert proposed_candidates(store, run_id, "") == []
    report = build_report(store, run_id)
    assert "Candidates the step tried" in report and "candidate 1 (from 0)" in report
    # live progress: GEPA's events, read by the Run page's snapshot while the step runs
    progress = store.list_events(run_id, kinds=["gepa"])
    assert progress and all(e.data["strategy"] == "g" and e.data["budget"] == 60 for e in progress)
    assert progress[0].data["seed"] == baseline.score and progress[-1].data["best"] == step.score
    assert progress[-1].data["candidates"] == 1 and progress[-1].data["calls"] >= 60
    assert [e.data["calls"] for e in progress] == sorted(e.data["calls"] for e in progress)


def test_the_current_program_is_kept_when_no_proposal_does_better(tmp_path: Path) -> None:
    doc = gepa_doc(tag="gepa-useless", proposal="Answer.", follows=FOLLOWS)
    compiled = compile_recorded(parse_config(doc), tmp_path)
    baseline, step = compiled.store.list_rounds(compiled.run_id)
    assert step.instructions == baseline.instructions and step.score == baseline.score
    (event,) = compiled.store.list_events(compiled.run_id, kinds=["candidates"])
    assert event.data["best"] == 0 and event.data["proposed"] >= 1
    assert all(r["instructions"] == {"classify": "Answer."} for r in event.data["rejected"])


def test_each_predictor_keeps_its_own_lm_during_and_after_the_step(tmp_path: Path) -> None:
    """analyze on scripted/large, classify on scripted/small, reflection on a third LM: if GEPA dropped the
    predictors' LMs, the step's calls would all go to the context LM (scripted/large)."""
    compiled = compile_recorded(parse_config(gepa_doc("analyze_classify", tag="gepa-lms", proposal="Think.")),
                                tmp_path)
    baseline, step = compiled.store.list_rounds(compiled.run_id)
    models = {"analyze.predict": "scripted/large", "classify": "scripted/small"}
    assert baseline.predictor_models == models and step.predictor_models == models
    assert {n: p.lm.model for n, p in compiled.program.named_predictors()} == models
    for candidate in compiled.program.candidate_programs:
        assert {n: p.lm.model for n, p in candidate["program"].named_predictors()} == models
    usage = {model: counts["calls"] for model, counts in step.lm_usage.items()}
    assert usage["scripted/large"] == usage["scripted/small"] >= 60  # one call per predictor per example
    assert usage["scripted/reflect"] >= 1


def test_the_results_page_lists_the_candidates_with_their_scores_and_diffs(monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.chdir(ROOT)
    manager = get_manager(db_path())
    run_id = manager.start(parse_config(gepa_doc(tag="gepa-page", follows=FOLLOWS)))
    assert manager.wait(run_id, 120)
    assert manager.store.get_run(run_id).status is RunStatus.FINISHED
    at = AppTest.from_file(str(ROOT / "pages" / "results.py"), default_timeout=60)
    at.query_params["run"] = str(run_id)
    at.run()
    assert not at.exception, at.exception
    assert any(m.value.startswith("##### Candidates the step of round 1 tried") for m in at.markdown)
    labels = [e.label for e in at.expander]
    assert any(label.startswith("the step's starting program: ") for label in labels)
    assert any(label.startswith("candidate 1 (from 0): ") and label.endswith(", kept") for label in labels)


def test_cancel_stops_a_gepa_step_within_a_candidate_evaluation(tmp_path: Path) -> None:
    manager = RunManager(Store(tmp_path / "runs.db"))
    doc = gepa_doc(tag="gepa-cancel", settings={"max_metric_calls": 5000}, delay=0.01, follows=FOLLOWS)
    run_id = manager.start(parse_config(doc))
    store = manager.store
    deadline = time.monotonic() + 60
    while not [e for e in store.list_events(run_id, kinds=["gepa"]) if e.data["iteration"] >= 1]:
        assert time.monotonic() < deadline, [e.message for e in store.list_events(run_id)]
        time.sleep(0.05)
    snapshot = run_snapshot(store, run_id)  # the Run page's progress line while the step runs
    assert snapshot.progress is not None and snapshot.progress.text.startswith("g: GEPA, ")
    assert "/5000 metric calls" in snapshot.progress.text and 0 < snapshot.progress.fraction < 1
    asked = time.monotonic()
    assert manager.cancel(run_id)
    assert manager.wait(run_id, timeout=10)
    stopped_in = time.monotonic() - asked
    assert stopped_in < 2.0, f"cancel took {stopped_in:.2f} s"
    run = store.get_run(run_id)
    assert run.status is RunStatus.CANCELLED, run.error
    assert [r.strategy for r in store.list_rounds(run_id)] == [""]
    assert run.best_strategy == ""
    assert store.list_events(run_id, kinds=["cancelled"])


@pytest.mark.slow
def test_a_gepa_step_on_the_embedded_model_at_a_tiny_budget(tmp_path: Path) -> None:
    """The real path: SmolLM2-135M serves the classifier and reflects (grammar-constrained through the run's
    adapter), 40 metric calls; the step finishes, says the reflection LM is tiny, and records its candidates."""
    doc = default_config_dict("classifier")
    doc["lms"] = {"small": {"kind": "embedded", "model": "smollm2-135m"},
                  "large": {"kind": "embedded", "model": "smollm2-135m"}}
    doc["data"]["split"] = {"train": 10, "val": 5, "test": 4, "seed": 1}
    doc["strategy"] = "g"
    doc["optimizers"] = {"g": {"type": "gepa", "settings": {"max_metric_calls": 40}}}
    manager = RunManager(Store(tmp_path / "runs.db"))
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, timeout=600)
    store = manager.store
    run = store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    baseline, step = store.list_rounds(run_id)
    assert step.strategy == "g" and step.score is not None and not step.eval_failed
    assert step.predictor_models == {"classify": "embedded/smollm2-135m"}
    # 40 program runs, the round's evaluation and at least one reflection call, all on the one model
    assert step.lm_usage["embedded/smollm2-135m"]["calls"] > 40
    assert any(e.data.get("warning") == "tiny_reflection_lm" for e in store.list_events(run_id, kinds=["status"]))
    (event,) = store.list_events(run_id, kinds=["candidates"])
    assert event.data["proposed"] >= 1 and event.data["metric_calls"] >= 40
    kept = event.data["candidates"]
    assert kept[0]["instructions"] == baseline.instructions and kept[0]["score"] == baseline.score
    assert step.instructions == kept[event.data["best"]]["instructions"]
    assert store.list_events(run_id, kinds=["gepa"])[-1].data["calls"] >= 40
