"""AppTest smoke and behaviour tests of every page (each test has its own STUDIO_HOME)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config.defaults import scripted_config
from core.config.schema import RunDraft
from core.document import (
    add_litellm,
    assign_predictors,
    new_document,
    remove_lm,
    role_preset,
    set_mapping,
    set_template,
    use_scripted,
)
from core.errors import ProgramError
from core.paths import db_path
from core.run import get_manager
from core.views.rounds import ROUND_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60


@pytest.fixture(autouse=True)
def _home(studio_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    return studio_home


def open_page(page: str, doc: RunDraft | None = None) -> AppTest:
    """Run one page file with the session's run draft prepared."""
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=TIMEOUT)
    if doc is not None:
        at.session_state["config_doc"] = doc
        at.session_state["doc_rev"] = 0
    at.run()
    assert not at.exception, at.exception
    return at


def test_app_entry_point_runs_the_default_page():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Program"]


def texts(at: AppTest) -> str:
    parts = [m.value for m in (*at.markdown, *at.caption, *at.info, *at.success, *at.warning, *at.error)]
    parts += [str(t.value) for t in at.title]
    return "\n".join(str(p) for p in parts)


def test_program_page_lists_predictors_of_the_default_template():
    at = open_page("program")
    values = at.dataframe[0].value
    assert list(values["predictor"]) == ["extract", "classify"]
    assert list(values["role"]) == ["large", "small"]
    assert list(values["fine-tunable"]) == [True, True]


def test_program_page_composed_stage_shows_core_message_for_bad_signature():
    at = open_page("program")
    at.radio[0].set_value("stages").run()
    assert not at.exception
    assert at.session_state["config_doc"].program.kind == "stages"
    signature = next(t for t in at.text_input if t.label == "Signature")
    signature.set_value("document analysis").run()
    assert any("exactly one '->'" in e.value for e in at.error)


def test_program_page_refuses_small_on_a_hosted_lm():
    doc = add_litellm(new_document(), "hosted", {"model": "openai/gpt-4o-mini"})
    doc, refused = assign_predictors(doc, [{"predictor": "classify", "lm": "hosted", "role": "large"}])
    assert refused == [] and doc.predictors["classify"].lm == "hosted"
    at = open_page("program", doc)
    editor = at.dataframe[0]
    assert list(editor.value["fine-tunable"]) == [True, False]
    _, problems = assign_predictors(doc, [{"predictor": "classify", "lm": "hosted", "role": "small"}])
    assert problems and "cannot be fine-tuned" in problems[0]


def test_program_page_role_presets_and_the_templates_default_roles():
    """Support triage (the first-run default) fine-tunes classify only; the tutorial template fine-tunes
    both stages (no larger embedded model than the small one); the presets reassign every predictor,
    and 'All small' on an LM that cannot be fine-tuned says so instead of changing anything."""
    draft = new_document()
    assert {n: a.role for n, a in draft.predictors.items()} == {"extract": "large", "classify": "small"}
    tutorial = set_template(draft, "analyze_classify")
    assert {n: a.role for n, a in tutorial.predictors.items()} == {"analyze.predict": "small", "classify": "small"}
    at = open_page("program", draft)
    next(b for b in at.button if b.label.startswith("All small")).click().run()
    assert not at.exception
    assert {a.role for a in at.session_state["config_doc"].predictors.values()} == {"small"}
    next(b for b in at.button if b.label.startswith("Last predictor small")).click().run()
    assert {n: a.role for n, a in at.session_state["config_doc"].predictors.items()} == {
        "extract": "large", "classify": "small"}
    hosted_only = add_litellm(draft, "hosted", {"model": "openai/gpt-4o-mini"})
    hosted_only, _ = assign_predictors(hosted_only, [{"predictor": n, "lm": "hosted", "role": "large"}
                                                     for n in hosted_only.predictors])
    hosted_only = remove_lm(remove_lm(hosted_only, "small"), "large")
    with pytest.raises(ProgramError, match="cannot have the role 'small' on LM 'hosted'"):
        role_preset(hosted_only, "all_small")
    with pytest.raises(ProgramError, match="unknown role preset 'some'; allowed: last_small, all_small"):
        role_preset(draft, "some")
    at = open_page("program", hosted_only)
    next(b for b in at.button if b.label.startswith("All small")).click().run()
    assert not at.exception and any("cannot be fine-tuned" in e.value for e in at.error)
    assert {a.role for a in at.session_state["config_doc"].predictors.values()} == {"large"}


def test_models_page_lists_embedded_models_and_toggles_scripted():
    at = open_page("models")
    assert "smollm2-135m" in at.dataframe[1].value["name"].tolist()
    assert "gemma3-270m" in at.dataframe[1].value["name"].tolist()
    at.toggle[0].set_value(True).run()
    assert not at.exception
    assert at.session_state["config_doc"].lms["large"].kind == "factory"


def test_models_page_adds_litellm_without_storing_the_typed_key():
    at = open_page("models")
    form_inputs = {t.label: t for t in at.text_input}
    form_inputs["Name in this configuration"].set_value("remote")
    form_inputs["...or type the API key (kept for this browser session only)"].set_value("sk-secret")
    at.button(key="FormSubmitter:add_lm-Add LM").click().run()
    assert not at.exception
    doc = at.session_state["config_doc"]
    assert isinstance(doc, RunDraft) and doc.lms["remote"].model == "openai/gpt-4o-mini"
    assert "sk-secret" not in repr(doc) and "sk-secret" not in doc.model_dump_json()
    assert at.session_state["api_keys"] == {"remote": "sk-secret"}


def test_models_page_test_connection_on_scripted_lm():
    at = open_page("models", use_scripted(new_document(), True))
    next(b for b in at.button if b.label == "Test connection").click().run()
    assert not at.exception
    assert any("answered" in s.value for s in at.success)


def test_data_page_shows_sample_preview_and_split():
    at = open_page("data")
    assert at.metric[0].value == "160"  # support_tickets.jsonl, the default template's sample
    assert any("10 validation" in s.value for s in at.success)


def test_data_page_bad_upload_shows_core_message():
    at = open_page("data")
    at.radio[0].set_value("file").run()
    at.get("file_uploader")[0].set_value(("bad.xlsx", b"\x00\x01binary", "application/octet-stream"))
    at.run()
    assert not at.exception
    assert any("allowed file types are .csv" in e.value for e in at.error)
    assert at.session_state["config_doc"].data.source.kind == "sample"


def test_data_page_upload_handler_reports_core_errors(studio_home: Path):
    from core.document import save_upload
    from core.errors import DataError

    with pytest.raises(DataError, match="no data rows"):
        save_upload(b"document,category\n", "empty.csv")
    path, table = save_upload((ROOT / "data" / "documents.csv").read_bytes(), "docs.csv")
    assert path.parent == studio_home / "uploads" and path.name.endswith("-docs.csv")
    assert len(table) == 168


def test_data_page_upload_of_a_csv_switches_the_source():
    at = open_page("data")
    at.radio[0].set_value("file").run()
    data = (ROOT / "data" / "documents.csv").read_bytes()
    at.get("file_uploader")[0].set_value(("mine.csv", data, "text/csv"))
    at.run()
    assert not at.exception
    source = at.session_state["config_doc"].data.source
    assert source.kind == "file" and source.path.endswith("-mine.csv")


def test_data_page_bad_csv_upload_shows_message_next_to_uploader():
    at = open_page("data")
    at.radio[0].set_value("file").run()
    at.get("file_uploader")[0].set_value(("broken.csv", b"a,b\n1,2,3\n", "text/csv"))
    at.run()
    assert not at.exception
    assert any("expected 2 columns" in e.value for e in at.error)


def test_strategy_page_presets_and_estimate():
    at = open_page("strategy")
    assert any("p -> w -> p" in m.value for m in at.markdown)
    at.button(key="preset_p_w").click().run()
    assert not at.exception
    assert at.session_state["config_doc"].strategy == "p -> w"
    assert any(m.label == "LM calls" for m in at.metric)


def test_strategy_page_bad_config_upload_shows_error():
    at = open_page("strategy")
    at.get("file_uploader")[0].set_value(("c.json", b'{"version": 1, "strategy": "x"}', "application/json"))
    at.run()
    assert not at.exception
    assert any("invalid run configuration" in e.value for e in at.error)


def test_run_page_incomplete_config_disables_start_with_preflight_messages():
    at = open_page("run", set_mapping(new_document(), {}))
    start = next(b for b in at.button if b.label == "Start run")
    assert start.disabled
    assert any("cannot start" in e.value and "not mapped" in e.value for e in at.error)
    assert any("No runs yet" in i.value for i in at.info)


def test_run_page_shows_a_finished_run_from_the_store():
    manager = get_manager(db_path())
    run_id = manager.start(scripted_config())
    assert manager.wait(run_id, 60)
    at = open_page("run", use_scripted(new_document(), True))
    assert not next(b for b in at.button if b.label == "Start run").disabled
    assert any("Run #" in m.value and "finished" in m.value for m in at.markdown)
    assert any("4 of 4 rounds" in c.value for c in at.caption)
    _assert_round_table(at)


def _assert_round_table(at) -> None:
    """The page shows the one round table: its columns, a row per round, the weight step's traces."""
    (table,) = [d.value for d in at.dataframe if list(d.value.columns) == list(ROUND_COLUMNS)]
    assert table["strategy"].tolist() == ["baseline", "p", "p -> w", "p -> w -> p"]
    assert table["traces"].str.startswith("kept ").tolist() == [False, False, True, False]


def test_run_page_names_a_fine_tune_whose_rows_max_length_cut():
    """A weight step whose rows were longer than max_length (the provider's meta.json says how many and by how
    much) is named on the Run page with its round; a run without cut rows shows no such warning. Where the
    fine-tune trained (device, precision, batch plan) is a caption of the same round."""
    import dataclasses

    from core.store.records import Truncation

    manager = get_manager(db_path())
    run_id = manager.start(scripted_config())
    assert manager.wait(run_id, 60)
    at = open_page("run", use_scripted(new_document(), True))
    assert not any("training rows of" in w.value for w in at.warning)
    weight = next(r for r in manager.store.list_rounds(run_id) if r.strategy == "p -> w")
    cut = {"scripted/small": Truncation(truncated=28, rows=30, max_length=384, row_tokens=414.0, cut_tokens=31.0,
                                        max_cut_tokens=35)}
    assert not any("trained on" in c.value for c in at.caption)
    device = {"scripted/small": "trained on cpu (float32, bf16 autocast on): 30 rows, 4 steps of batch 8"}
    manager.store.add_round(dataclasses.replace(weight, details=dataclasses.replace(weight.details, truncated=cut,
                                                                                     trained_on=device)))
    at = open_page("run", use_scripted(new_document(), True))
    assert f"Round {weight.index} ('p -> w'): scripted/small trained on cpu (float32, bf16 autocast on): 30 rows, " \
           "4 steps of batch 8" in [c.value for c in at.caption]
    (warning,) = [w.value for w in at.warning if "training rows of" in w.value]
    assert warning.startswith(f"Round {weight.index} ('p -> w'): 28 of 30 training rows of scripted/small were "
                              "longer than max_length=384 tokens and lost ~31 tokens each")


def test_run_page_says_where_a_run_is_tracked_and_warns_when_its_mlflow_logging_failed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from core.store import Store
    from core.store.records import RunStatus

    store = Store(db_path())
    run_id = store.create_run("tracked", scripted_config(), RunStatus.FINISHED)
    at = open_page("run", use_scripted(new_document(), True))
    assert not any("MLflow" in c.value for c in at.caption) and not any("MLflow" in w.value for w in at.warning)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    store.add_event(run_id, "tracking", "the run was not logged to MLflow: the tracking server cannot be reached "
                    "(Connection refused)", {"ok": False})
    at = open_page("run", use_scripted(new_document(), True))
    assert any("logged to MLflow (tracking URI http://mlflow.example:5000" in c.value for c in at.caption)
    assert any(w.value.startswith("the run was not logged to MLflow") for w in at.warning)
    assert not at.exception


def test_results_page_empty_state():
    at = open_page("results")
    assert any("No runs yet" in i.value for i in at.info)


def test_results_page_with_a_run():
    manager = get_manager(db_path())
    run_id = manager.start(scripted_config())
    assert manager.wait(run_id, 60)
    at = open_page("results")
    assert not at.exception
    history = at.dataframe[0].value
    assert history["status"].tolist() == ["finished"]
    assert not at.error
    _assert_round_table(at)


def test_pages_read_the_run_draft_by_attribute_never_by_raw_key():
    """The session's document is a typed ``RunDraft``: a page that indexes it like a dict
    (``current["data"]``, ``current.get("lms")``) is a page that no test happened to render."""
    import ast

    found = []
    for path in sorted((ROOT / "pages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            drafts = {a.arg for a in node.args.args if isinstance(a.annotation, ast.Name) and a.annotation.id == "RunDraft"}
            drafts |= {t.id for n in ast.walk(node) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
                       and isinstance(n.value.func, ast.Name) and n.value.func.id == "doc"
                       for t in n.targets if isinstance(t, ast.Name)}
            for n in ast.walk(node):
                target = n.value if isinstance(n, ast.Subscript) else (
                    n.func.value if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                    and n.func.attr in ("get", "setdefault", "items", "keys", "values") else None)
                if isinstance(target, ast.Name) and target.id in drafts or (
                        isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "doc"):
                    found.append(f"{path.name}:{n.lineno}")
    assert found == []


def test_the_session_document_must_be_exactly_a_draft_not_a_config():
    """A ``RunConfig`` is a ``RunDraft`` subclass whose every later edit would run the checks across
    fields; the session refuses it with a message naming the way to a draft."""
    from pages._ui import set_doc

    with pytest.raises(TypeError, match=r"must be a RunDraft \(core.document.draft_of .*got RunConfig"):
        set_doc(scripted_config())
    with pytest.raises(TypeError, match="got dict"):
        set_doc(new_document().model_dump())


WIDE_OPTIMIZER = '''
"""A test step type whose settings use every kind of setting the Strategy page shows (it changes nothing)."""
from typing import Literal

from pydantic import Field

from core.config.steps import Settings, StepType
from core.optimizers.entry import StepCost


class WideSettings(Settings):
    instruction: str = Field("Answer carefully.", max_length=200, description="set on every predictor")
    note: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    style: Literal["short", "long"] = "short"
    flag: bool = False
    judge_lm: str | None = Field(None, json_schema_extra={"choices": "lms", "unset": "no judge"})


class Keep:
    def compile(self, student, **kwargs):
        return student


DECLARATION = StepType("wide", "prompt", "keeps the program; has every kind of setting", WideSettings)


def build(settings, ctx):
    return Keep()


def estimate(settings, ctx):
    return StepCost(ctx.predictors * ctx.val)
'''

WIDE_PAGE = '''
import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import document

draft = document.add_optimizer(document.use_scripted(document.new_document(), True), "t", "wide")
draft = document.set_steps(draft, ["t", "w", "p"])
at = AppTest.from_file(str(Path.cwd() / "pages" / "strategy.py"), default_timeout=60)
at.session_state["config_doc"] = draft
at.session_state["doc_rev"] = 0
at.run()
out = {"exceptions": [e.value for e in at.exception], "errors": [e.value for e in at.error],
       "metrics": [m.label for m in at.metric],
       "help": next(s.help for s in at.selectbox if s.label == "Optimizer")}
form = "settings_t_0"
widgets = {w.label: w for kind in ("text_input", "number_input", "selectbox", "checkbox") for w in at.get(kind)
           if w.form_id == form}
out["widgets"] = sorted(widgets)
out["judge_options"] = widgets["judge_lm"].options
widgets["instruction"].set_value("Pick the label.")
widgets["note"].set_value("")
widgets["temperature"].set_value(0.3)
widgets["style"].set_value("long")
widgets["flag"].check()
widgets["judge_lm"].set_value("small")
next(b for b in at.button if b.form_id == form).click()
at.run()
out["exceptions"] += [e.value for e in at.exception]
out["saved"] = at.session_state["config_doc"].optimizers["t"].settings.model_dump()
print(json.dumps(out))
'''


def test_strategy_page_shows_and_saves_text_choice_and_optional_settings_of_a_new_optimizer(tmp_path: Path):
    """With one more step type, added from outside the package before the configuration reads the
    declarations (no file of core/ edited): the Strategy page renders its str / str | None / float |
    None / Literal / bool / LM-name settings with the real widgets, and saving the form stores typed values."""
    import json
    import subprocess
    import sys

    from tests.step_type_helpers import plugin_env

    (tmp_path / "page.py").write_text(WIDE_PAGE)
    done = subprocess.run([sys.executable, str(tmp_path / "page.py")], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=plugin_env(tmp_path / "plugin", "wide", WIDE_OPTIMIZER))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["exceptions"] == [] and out["errors"] == [], out
    assert "LM calls" in out["metrics"]  # the estimate priced the new step too
    assert "**prompt · wide**: keeps the program; has every kind of setting" in out["help"]
    assert "**weight · finetune**: fine-tunes the small predictors' LM" in out["help"]
    assert out["widgets"] == ["flag", "instruction", "judge_lm", "note", "style", "temperature"]
    assert out["judge_options"] == ["(no judge)", "large", "small"]
    assert out["saved"] == {"instruction": "Pick the label.", "note": None, "temperature": 0.3, "style": "long",
                            "flag": True, "judge_lm": "small"}
