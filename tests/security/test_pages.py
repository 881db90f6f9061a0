"""Pages run no code, read no file and call no server until the user acts.

* A config uploaded with user code (a program file and an LM factory, each writing a marker when
  imported) is rendered by every page: nothing runs; the pages show what would run.
* A ``file`` data source from an uploaded config is shown with its resolved path and not read.
* The Run page with a hosted LM whose ``api_base`` is a loopback listener: the listener hears
  nothing on render; the render takes about as long as with no hosted LM.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config.defaults import default_config_dict, scripted_config_dict
from core.config.schema import RunDraft
from core.document import add_litellm, assign_predictors, new_document, use_scripted
from tests.security_helpers import Listener

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["program", "models", "data", "strategy", "run", "results"]
TIMEOUT = 60

PROGRAM = '''
import pathlib
pathlib.Path({marker!r}).write_text("program ran")
import dspy

class Triage(dspy.Module):
    def __init__(self):
        super().__init__()
        self.analyze = dspy.Predict("document -> category")

    def forward(self, document):
        return self.analyze(document=document)
'''

FACTORY = '''
import pathlib
pathlib.Path({marker!r}).write_text("factory ran")

def make(**options):
    from core.lms.scripted import make_lm
    return make_lm("large")
'''


@pytest.fixture(autouse=True)
def _home(studio_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    return studio_home


def open_page(page: str, state: dict) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in (*at.markdown, *at.caption, *at.info, *at.success, *at.warning, *at.error)]
    return "\n".join(str(p) for p in parts)


def uploaded_through_the_strategy_page(doc: dict) -> RunDraft:
    """The draft the Strategy page's config upload of ``doc`` (a JSON file's content) produces."""
    at = AppTest.from_file(str(ROOT / "pages" / "strategy.py"), default_timeout=TIMEOUT)
    at.run()
    at.get("file_uploader")[0].set_value(("shared.json", json.dumps(doc).encode(), "application/json"))
    at.run()
    assert not at.exception, at.exception
    return at.session_state["config_doc"]


@pytest.fixture
def code_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Path, Path]:
    markers = tmp_path / "program.marker", tmp_path / "factory.marker"
    program = tmp_path / "triage.py"
    program.write_text(PROGRAM.format(marker=str(markers[0])))
    (tmp_path / "user_lms.py").write_text(FACTORY.format(marker=str(markers[1])))
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = scripted_config_dict("analyze_classify")
    doc.update(program={"kind": "user_file", "path": str(program), "class_name": None}, allow_user_code=True,
               strategy="p", predictors={"analyze": {"lm": "large", "role": "large"}})
    doc["lms"]["large"] = {"kind": "factory", "factory": "user_lms:make", "options": {}}
    doc["data"].update(inputs=["document"], labels=["category"], mapping={"document": "text", "category": "category"})
    return doc, *markers


def test_an_uploaded_config_with_user_code_runs_nothing_on_any_page(code_config) -> None:
    doc, program_marker, factory_marker = code_config
    uploaded = uploaded_through_the_strategy_page(doc)
    for page in PAGES:
        at = open_page(page, {"config_doc": uploaded, "doc_rev": 0})
        assert not program_marker.exists(), f"the {page} page ran the program file"
        assert not factory_marker.exists(), f"the {page} page ran the LM factory"
        if page in ("program", "run", "strategy"):
            shown = texts(at)
            assert "triage.py" in shown and "user_lms:make" in shown, f"{page} does not show what would run"
        if page == "run":
            assert next(b for b in at.button if b.label == "Start run").disabled
    assert uploaded.allow_user_code is False  # the file's own consent is not the user's
    # the positive control: the opt-in on the Program page is what lets the code run
    at = open_page("program", {"config_doc": uploaded, "doc_rev": 0})
    next(c for c in at.checkbox if c.label.startswith("I trust this code")).check().run()
    assert not at.exception, at.exception
    assert at.session_state["config_doc"].allow_user_code is True
    assert program_marker.exists()


def test_a_file_source_from_an_uploaded_config_is_shown_and_not_read(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import core.document.data
    import core.plan.prepare

    reads: list[str] = []
    for module in (core.document.data, core.plan.prepare):
        original = module.load_table_from_path
        monkeypatch.setattr(module, "load_table_from_path",
                            lambda path, _o=original: (reads.append(str(path)), _o(path))[1])
    data = tmp_path / "private" / "customers.csv"
    data.parent.mkdir()
    data.write_bytes((ROOT / "data" / "documents.csv").read_bytes())
    doc = default_config_dict()
    doc["data"]["source"] = {"kind": "file", "path": str(data)}  # the uploaded file's JSON
    uploaded = uploaded_through_the_strategy_page(doc)
    for page in ("data", "strategy", "run"):
        at = open_page(page, {"config_doc": uploaded, "doc_rev": 0})
        assert str(data.resolve()) in texts(at), f"the {page} page does not show the resolved path"
    private = [r for r in reads if "private" in r]
    assert private == []
    at = open_page("data", {"config_doc": uploaded, "doc_rev": 0})
    next(b for b in at.button if b.label == "Allow reading this file").click().run()
    assert not at.exception, at.exception
    assert [r for r in reads if "private" in r]  # the user's action is what reads it


def hosted_document(api_base: str | None) -> RunDraft:
    doc = use_scripted(new_document(), True)
    if api_base:
        doc = add_litellm(doc, "hosted", {"model": "openai/smol", "api_base": api_base,
                                          "api_key_env": "STUDIO_PAGES_TEST_KEY"})
        large = next(p for p, a in doc.predictors.items() if a.role == "large")
        doc, refused = assign_predictors(doc, [{"predictor": large, "lm": "hosted", "role": "large"}])
        assert refused == []
    return doc


def timed_rerun(at: AppTest) -> float:
    started = time.perf_counter()
    at.run()
    assert not at.exception, at.exception
    return time.perf_counter() - started


def test_the_run_page_calls_no_server_on_render_and_renders_as_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_PAGES_TEST_KEY", "canary-pages-key-123456789")
    with Listener() as listener:
        pages = {"hosted_lm": open_page("run", {"config_doc": hosted_document(listener.url), "doc_rev": 0}),
                 "no_hosted_lm": open_page("run", {"config_doc": hosted_document(None), "doc_rev": 0})}
        assert not next(b for b in pages["hosted_lm"].button if b.label == "Start run").disabled
        assert listener.url in texts(pages["hosted_lm"])  # where the key would go is shown before Start
        seconds: dict[str, list[float]] = {name: [] for name in pages}
        for _ in range(10):  # interleaved, so both see the same machine load
            for name, at in pages.items():
                seconds[name].append(timed_rerun(at))
        assert listener.requests == [], "the Run page contacted the endpoint on render"
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(json.dumps({"run_page_rerun_median_s": medians}))
    assert medians["hosted_lm"] < medians["no_hosted_lm"] + 0.25  # the old check waited on the server (up to 5 s)
