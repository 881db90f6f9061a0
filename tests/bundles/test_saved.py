"""A run's own saved programs: one loader, which refuses LM classes and engines outside the package
before DSPy would import them, and one registration of fine-tuned models, whoever reads them (the
Results page, the export, a resumed run, a bundle loaded elsewhere)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from core.bundles.engines import register_finetuned
from core.bundles.export import export_run, load_bundle, predict, read_manifest
from core.bundles.saved import describe_program, load_run_program, load_saved_state
from core.errors import ExportError
from core.lms.scripted import ScriptedEngine
from core.programs import build_program
from core.store import Store
from tests.security_helpers import finished_run

DOCUMENT = "The supplier missed two deliveries this quarter."
SCRIPTED = "core.lms.scripted:ScriptedEngine"


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fine-tuned models registered by a test are forgotten after it (as a fresh process would be)."""
    monkeypatch.setattr(ScriptedEngine, "_finetuned", dict(ScriptedEngine._finetuned))
    monkeypatch.setattr(ScriptedEngine, "_artifacts", dict(ScriptedEngine._artifacts))


def best_file(store: Store, run_id: int) -> Path:
    return Path(store.list_artifacts(run_id, "best_program")[-1].path)


def edit_state(path: Path, change) -> None:
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def with_a_fine_tune(tmp_path: Path) -> tuple[Store, int, str, Path]:
    """A finished run whose best program's ``classify`` is served by a scripted fine-tune of the small
    model, its weights recorded as the recorder records them (the model is not registered here)."""
    store, run_id = finished_run(tmp_path)
    model = f"scripted/small:ft-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "weights" / model.replace("/", "_").replace(":", "_")
    folder.mkdir(parents=True)
    rows = [{"inputs": {"analysis": DOCUMENT}, "outputs": {"category": "tuned-category", "risk_level": "tuned-risk"}}]
    (folder / "rows.json").write_text(json.dumps(rows))
    (folder / "meta.json").write_text(json.dumps({"base": "scripted/small", "kind": "scripted", "file": "rows.json"}))
    store.add_artifact(run_id, "weights", folder, {"model": model, "base": "scripted/small", "engine": SCRIPTED})
    edit_state(best_file(store, run_id), lambda s: s["classify"]["lm"].update(model=model))
    return store, run_id, model, folder


def test_the_results_page_loader_serves_the_run_s_fine_tune_again(tmp_path: Path) -> None:
    store, run_id, model, folder = with_a_fine_tune(tmp_path)
    assert ScriptedEngine.artifact_dir(model) is None  # a restarted app has forgotten it
    program = load_run_program(store, run_id, "best_program")
    assert ScriptedEngine.artifact_dir(model) == folder
    assert [(v.name, v.model) for v in describe_program(program)] == [("analyze.predict", "scripted/large"),
                                                                       ("classify", model)]
    out = program(document=DOCUMENT)
    assert (out.category, out.risk_level) == ("tuned-category", "tuned-risk")  # the fine-tune's row answers


def test_an_exported_fine_tune_is_served_from_the_bundle_in_a_process_that_never_saw_the_run(tmp_path: Path) -> None:
    store, run_id, model, _ = with_a_fine_tune(tmp_path)
    bundle = export_run(store, run_id, tmp_path / "bundle")
    assert ScriptedEngine.artifact_dir(model) is None  # exporting reads the program, it serves nothing
    entry = read_manifest(bundle)["finetuned"][model]
    assert entry["engine"] == SCRIPTED and (bundle / entry["folder"] / "rows.json").is_file()
    program = load_bundle(bundle)
    assert ScriptedEngine.artifact_dir(model) == (bundle / entry["folder"]).resolve()
    assert predict(program, {"document": DOCUMENT})["category"] == "tuned-category"


def plant(tmp_path: Path, what: str):
    """A change to a saved program that names code outside the package (which writes a marker if imported)."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "class Engine:\n    def dump_state(self): return {}\n    @classmethod\n    def load_state(cls, s): return cls()\n"
        "class EvilLM: pass\n")
    if what == "engine":
        return marker, lambda s: s["classify"]["lm"].update(engine={"class": "evil_module:Engine", "state": {}})
    return marker, lambda s: s["classify"]["lm"].update(_dspy_lm_class="evil_module.EvilLM")


@pytest.mark.parametrize("what", ["engine", "lm class"])
@pytest.mark.parametrize("reader", ["results page", "export"])
def test_every_reader_refuses_code_outside_the_package_and_never_imports_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, reader: str) -> None:
    store, run_id = finished_run(tmp_path)
    marker, change = plant(tmp_path, what)
    edit_state(best_file(store, run_id), change)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ExportError, match="evil_module") as info:
        if reader == "export":
            export_run(store, run_id, tmp_path / "bundle")
        else:
            load_run_program(store, run_id, "best_program")
    assert "\n" not in str(info.value) and "classify" in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "bundle").exists()


def test_a_resumed_round_takes_the_run_s_lms_and_never_reads_the_file_s(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store, run_id = finished_run(tmp_path)
    marker, change = plant(tmp_path, "engine")
    path = best_file(store, run_id)
    edit_state(path, change)
    edit_state(path, lambda s: s["classify"].update(demos=[{"analysis": "a", "category": "c", "risk_level": "r"}]))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = store.get_run(run_id).require_config()
    lms = {"analyze.predict": object(), "classify": object()}
    program = load_saved_state(build_program(config.program), path, lms=lms)
    assert {name: p.lm for name, p in program.named_predictors()} == lms
    assert [dict(d) for d in program.classify.demos] == [{"analysis": "a", "category": "c", "risk_level": "r"}]
    assert not marker.exists()


def test_a_saved_program_that_is_not_json_is_named(tmp_path: Path) -> None:
    store, run_id = finished_run(tmp_path)
    best_file(store, run_id).write_text("{not json")
    with pytest.raises(ExportError, match="cannot be read as JSON"):
        load_run_program(store, run_id, "best_program")
    best_file(store, run_id).unlink()
    with pytest.raises(ExportError, match="does not exist"):
        load_run_program(store, run_id, "best_program")


class RecordingEngine:
    def __init__(self) -> None:
        self.registered: list[tuple[str, Path]] = []

    def register_finetuned(self, model: str, folder: Path) -> None:
        self.registered.append((model, folder))


def test_the_one_registration_skips_engines_that_serve_no_fine_tunes(tmp_path: Path) -> None:
    engine = RecordingEngine()
    assert register_finetuned(engine, "x:ft-1", str(tmp_path)) is True
    assert engine.registered == [("x:ft-1", tmp_path)]
    assert register_finetuned(None, "x:ft-1", tmp_path) is False  # a LiteLLM LM has no engine object
    assert register_finetuned("openai", "x:ft-1", tmp_path) is False
    assert register_finetuned(object(), "x:ft-1", tmp_path) is False
    with pytest.raises(FileNotFoundError):  # the engine's own error for a folder without its weights
        register_finetuned(ScriptedEngine, "scripted/small:ft-none", tmp_path / "missing")
