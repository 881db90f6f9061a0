"""Hostile bundles: each is refused with a one-line message, runs nothing, calls nothing, leaks nothing.

Every case starts from a real bundle written by ``export_run`` and tampers with one thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from core.bundles.export import export_run, load_bundle, predict, read_manifest
from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.errors import ExportError
from tests.security_helpers import Listener, finished_run

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "STUDIO_SECURITY_TEST_KEY"
CANARY = "canary-key-0f9e8d7c6b5a49382716"
HOSTED = "analyze.predict"  # the large predictor of the analyze_classify template


@pytest.fixture(autouse=True)
def _private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Extraction folders go to a folder of this test, so a leftover one is seen."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv(KEY_ENV, CANARY)
    return folder


def leftovers(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "tmpdir").iterdir()]


def bundle_folder(tmp_path: Path, doc: dict | None = None) -> Path:
    store, run_id = finished_run(tmp_path, doc)
    return export_run(store, run_id, tmp_path / "bundle")


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def first_lm(state: dict) -> dict:
    return next(v["lm"] for k, v in state.items() if k != "metadata")


def refused(path: Path, match: str, **kwargs) -> str:
    with pytest.raises(ExportError, match=match) as info:
        load_bundle(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_a_bundle_of_this_code_base_loads_and_predicts(tmp_path: Path) -> None:
    bundle = bundle_folder(tmp_path)
    program = load_bundle(bundle)
    out = predict(program, {"document": "The supplier missed two deliveries this quarter."})
    assert out and all(isinstance(k, str) for k in out)
    assert all(p.lm.model.startswith("scripted/") for _, p in program.named_predictors())


def test_the_zip_form_loads_and_its_temp_folder_goes_when_the_program_is_released(tmp_path: Path) -> None:
    import gc

    store, run_id = finished_run(tmp_path)
    bundle = export_run(store, run_id, tmp_path / "bundle.zip")
    program = load_bundle(bundle)
    assert len(leftovers(tmp_path)) == 1
    del program
    gc.collect()
    assert leftovers(tmp_path) == []


def test_foreign_engine_is_refused(tmp_path: Path) -> None:
    bundle = bundle_folder(tmp_path)
    edit_json(bundle / "program.json", lambda s: first_lm(s).update(engine={"class": "os:system", "state": {}}))
    refused(bundle, "engine 'os:system', which is not part of BetterTogether Studio")


def test_custom_lm_class_is_refused_and_never_imported(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "evil_lm.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass EvilLM: pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        bundle = bundle_folder(tmp_path)
        edit_json(bundle / "program.json", lambda s: first_lm(s).update(_dspy_lm_class="evil_lm.EvilLM"))
        refused(bundle, "names the LM class 'evil_lm.EvilLM'")
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()


def test_async_engine_is_refused_and_never_imported(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "evil_engine.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "class Engine:\n    def dump_state(self): return {}\n    @classmethod\n    def load_state(cls, s): return cls()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        bundle = bundle_folder(tmp_path)
        edit_json(bundle / "program.json",
                  lambda s: first_lm(s).update(async_engine={"class": "evil_engine:Engine", "state": {}}))
        refused(bundle, "async_engine")
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()


def test_model_list_is_refused(tmp_path: Path) -> None:
    bundle = bundle_folder(tmp_path)
    edit_json(bundle / "program.json", lambda s: first_lm(s).update(
        model_list=[{"model_name": "x", "litellm_params": {"api_base": "http://127.0.0.1:9"}}]))
    refused(bundle, "model_list")


def hosted_doc(api_base: str) -> dict:
    doc = scripted_config_dict("analyze_classify", tag="hosted")
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/smol", "api_base": api_base, "api_key_env": KEY_ENV}
    doc["predictors"][HOSTED]["lm"] = "hosted"
    return doc


def test_api_base_needs_consent_and_the_listener_hears_nothing(tmp_path: Path) -> None:
    with Listener() as listener:
        bundle = bundle_folder(tmp_path, hosted_doc(listener.url))
        message = refused(bundle, "endpoint you have not trusted")
        assert f"--trust-endpoint {listener.url}" in message
        # and from the command line, in a fresh process with the key in its environment
        out = subprocess.run([sys.executable, "-m", "core", "predict", str(bundle), "--input", '{"text": "hi"}'],
                             cwd=ROOT, env={**os.environ, KEY_ENV: CANARY}, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2 and "--trust-endpoint" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert listener.requests == []
        # with consent, the LM is built for that endpoint (and only then gets the key)
        program = load_bundle(bundle, trusted_endpoints=[listener.url + "/"])
        lm = dict(program.named_predictors())[HOSTED].lm
        assert lm.kwargs["api_base"] == listener.url and lm.kwargs["api_key"] == CANARY
        assert listener.requests == []


def test_api_base_planted_in_program_json_only_is_caught_too(tmp_path: Path) -> None:
    doc = hosted_doc("http://127.0.0.1:9/v1")
    del doc["lms"]["hosted"]["api_base"]
    bundle = bundle_folder(tmp_path, doc)
    edit_json(bundle / "program.json", lambda s: s[HOSTED]["lm"].update(base_url="http://127.0.0.1:9/v1"))
    refused(bundle, "http://127.0.0.1:9/v1")


def test_without_api_base_a_bundle_cannot_choose_which_key_is_sent(tmp_path: Path) -> None:
    doc = hosted_doc("http://unused")
    del doc["lms"]["hosted"]["api_base"]
    program = load_bundle(bundle_folder(tmp_path, doc))
    lm = dict(program.named_predictors())[HOSTED].lm
    assert lm.kwargs.get("api_key") != CANARY  # the bundle's api_key_env is ignored without a trusted endpoint


@pytest.mark.parametrize("folder", ["../outside", "/etc", "weights/../../outside"])
def test_weights_folder_outside_the_bundle_is_refused(tmp_path: Path, folder: str) -> None:
    bundle = bundle_folder(tmp_path)
    (tmp_path / "outside").mkdir(exist_ok=True)
    (tmp_path / "outside" / "rows.json").write_text("[]")
    edit_json(bundle / "manifest.json", lambda m: m.__setitem__(
        "finetuned", {"scripted/small:ft-x": {"folder": folder, "engine": "core.lms.scripted:ScriptedEngine"}}))
    refused(bundle, "leaves the bundle")


def test_an_embedded_fine_tuned_model_is_served_by_our_engine_from_inside_the_bundle(tmp_path: Path) -> None:
    """The shape export_run writes for a LoRA fine-tune of an embedded model (no model is loaded here)."""
    from core.lms.embedded import LlamaEngine

    tuned = "embedded/smollm2-135m:ft-security"
    bundle = bundle_folder(tmp_path)
    weights = bundle / "weights" / "tuned"
    weights.mkdir(parents=True)
    (weights / "adapter.gguf").write_bytes(b"GGUF")
    (weights / "meta.json").write_text(json.dumps({"base": "smollm2-135m", "kind": "lora", "file": "adapter.gguf"}))
    edit_json(bundle / "manifest.json", lambda m: m.__setitem__(
        "finetuned", {tuned: {"folder": "weights/tuned", "engine": "core.lms.embedded:LlamaEngine"}}))
    edit_json(bundle / "program.json", lambda s: s["classify"]["lm"].update(
        model=tuned, engine={"class": "core.lms.embedded:LlamaEngine", "state": {}}, temperature=0.0, max_tokens=64))
    lm = dict(load_bundle(bundle).named_predictors())["classify"].lm
    assert lm.model == tuned and lm.kwargs["max_tokens"] == 64
    assert LlamaEngine.shared().artifact_dir(tuned) == weights.resolve()


@pytest.mark.parametrize("file", ["../../secret.gguf", "/tmp/secret.gguf"])
def test_meta_json_file_outside_the_bundle_is_refused(tmp_path: Path, file: str) -> None:
    bundle = bundle_folder(tmp_path)
    weights = bundle / "weights" / "tuned"
    weights.mkdir(parents=True)
    (weights / "meta.json").write_text(json.dumps({"base": "smollm2-135m", "kind": "merged", "file": file}))
    edit_json(bundle / "manifest.json", lambda m: m.__setitem__(
        "finetuned", {"embedded/x:ft-1": {"folder": "weights/tuned", "engine": "core.lms.embedded:LlamaEngine"}}))
    refused(bundle, "leaves the bundle")


def test_user_program_file_name_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = bundle_folder(tmp_path)
    edit_json(bundle / "manifest.json", lambda m: m.__setitem__(
        "program", {"kind": "user_file", "path": "x.py", "file_name": "../../evil.py", "sha256": "0"}))
    refused(bundle, "leaves the bundle", allow_user_code=True)


@pytest.mark.parametrize("name", ["program.json", "manifest.json"])
def test_a_link_from_a_bundle_folder_to_a_file_elsewhere_is_refused(tmp_path: Path, name: str) -> None:
    bundle = bundle_folder(tmp_path)
    elsewhere = tmp_path / f"elsewhere-{name}"
    (bundle / name).replace(elsewhere)
    (bundle / name).symlink_to(elsewhere)
    refused(bundle, "leaves the bundle")


def test_zip_with_traversing_member_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("manifest.json", "{}")
        zf.writestr("../../escaped.txt", "x")
    refused(evil, "leaves the bundle")
    assert not (tmp_path / "escaped.txt").exists() and leftovers(tmp_path) == []


def test_zip_bomb_is_refused_before_extraction(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps({"format": "bettertogether-studio-bundle", "format_version": 1}))
        zf.writestr("weights/zeros.gguf", b"\0" * (64 * 1024 * 1024))
    assert bomb.stat().st_size < 1024 * 1024
    refused(bomb, "zip bomb")
    assert leftovers(tmp_path) == []


def test_zip_with_too_many_members_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.bundles.load

    monkeypatch.setattr(core.bundles.load, "MAX_MEMBERS", 10)
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(11):
            zf.writestr(f"f{i}.txt", "x")
    refused(many, "at most 10")


def test_truncated_zip_is_refused(tmp_path: Path) -> None:
    store, run_id = finished_run(tmp_path)
    bundle = export_run(store, run_id, tmp_path / "bundle.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    refused(cut, "truncated or corrupt")
    with pytest.raises(ExportError, match="truncated or corrupt"):
        read_manifest(cut)
    assert leftovers(tmp_path) == []


def test_unknown_predictor_state_keys_are_refused(tmp_path: Path) -> None:
    bundle = bundle_folder(tmp_path)
    edit_json(bundle / "program.json", lambda s: next(v for k, v in s.items() if k != "metadata").update(
        forward="not data"))
    refused(bundle, "unknown keys \\['forward'\\]")


# --- the two core.* factory bypasses ---------------------------------------------------------------


def factory_doc(factory: str, options: dict) -> dict:
    doc = scripted_config_dict("analyze_classify")
    doc["lms"]["large"] = {"kind": "factory", "factory": factory, "options": options}
    return doc


@pytest.mark.parametrize("factory,options", [
    ("core.bundles.export:load_bundle", {"path": "x", "allow_user_code": True}),
    ("core.programs:build_program_from_definition",
     {"defn": {"kind": "user_file", "path": "/tmp/x.py", "file_name": "x.py", "sha256": "0"}, "allow_user_code": True}),
])
def test_core_factories_other_than_the_scripted_lm_need_the_opt_in(factory: str, options: dict) -> None:
    from core.config.schema import FactoryLMSpec
    from core.errors import ConfigError, LMError
    from core.lms.registry import build_lm, capabilities

    with pytest.raises(ConfigError, match="runs your code"):
        parse_config(factory_doc(factory, options))
    spec = FactoryLMSpec(kind="factory", factory=factory, options=options)
    assert not spec.is_builtin
    with pytest.raises(LMError, match="runs your code"):
        build_lm("large", spec)
    with pytest.raises(LMError, match="runs your code"):
        capabilities(spec)


# --- export writes, never deletes -----------------------------------------------------------------


def test_export_onto_a_folder_of_other_files_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    store, run_id = finished_run(tmp_path)
    documents = tmp_path / "Documents"
    (documents / "taxes").mkdir(parents=True)
    (documents / "taxes" / "2025.pdf").write_bytes(b"precious")
    (documents / "notes.txt").write_text("precious")
    before = sorted(p.relative_to(documents).as_posix() for p in documents.rglob("*"))
    with pytest.raises(ExportError, match="not a BetterTogether Studio bundle") as info:
        export_run(store, run_id, documents)
    assert "\n" not in str(info.value) and "choose a new name" in str(info.value)
    assert sorted(p.relative_to(documents).as_posix() for p in documents.rglob("*")) == before
    assert (documents / "taxes" / "2025.pdf").read_bytes() == b"precious"
    other = tmp_path / "report.zip"
    other.write_bytes(b"not a bundle")
    with pytest.raises(ExportError, match="not a BetterTogether Studio bundle"):
        export_run(store, run_id, other)
    assert other.read_bytes() == b"not a bundle"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_cli_export_onto_an_existing_folder_is_refused(tmp_path: Path) -> None:
    store, run_id = finished_run(tmp_path)
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    out = subprocess.run([sys.executable, "-m", "core", "--db", str(tmp_path / "runs.db"), "export", str(run_id),
                          str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not a BetterTogether Studio bundle" in out.stderr, out.stderr
    assert (folder / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["bundle", "bundle.zip"])
def test_export_replaces_a_studio_bundle_and_a_failed_export_keeps_the_old_one(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.bundles.export

    store, run_id = finished_run(tmp_path)
    out = export_run(store, run_id, tmp_path / name)
    first = read_manifest(out)["created_at"]
    again = export_run(store, run_id, tmp_path / name)  # a Studio bundle may be replaced
    assert read_manifest(again)["run_id"] == run_id

    def broken(*args, **kwargs):
        raise OSError("disk full")

    # the zip fails while being written (the old code had already unlinked the old one); the folder
    # fails before placement
    if name.endswith(".zip"):
        monkeypatch.setattr(zipfile.ZipFile, "write", broken)
    else:
        monkeypatch.setattr(core.bundles.export, "_copy_weights", broken)
    snapshot = (out.read_bytes() if out.is_file() else
                {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    with pytest.raises(OSError, match="disk full"):
        export_run(store, run_id, tmp_path / name)
    after = (out.read_bytes() if out.is_file() else
             {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert after == snapshot
    monkeypatch.undo()
    assert load_bundle(out) is not None
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert first


OLD_BUNDLE = ROOT / "tests" / "fixtures" / "bundles" / "classifier-6d17f59"


def test_a_bundle_written_by_the_first_exporter_loads_and_its_fine_tune_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle in tests/fixtures/bundles/classifier-6d17f59 was written by the exporter of commit
    6d17f59 (its README says how): today's loader reads it as data, serves its scripted fine-tune from
    its own weights folder, and the fine-tune answers the rows it was trained on."""
    from core.lms.scripted import ScriptedEngine

    monkeypatch.setattr(ScriptedEngine, "_finetuned", dict(ScriptedEngine._finetuned))  # forgotten after the test
    monkeypatch.setattr(ScriptedEngine, "_artifacts", dict(ScriptedEngine._artifacts))
    bundle = tmp_path / "old"
    shutil.copytree(OLD_BUNDLE, bundle)
    manifest = read_manifest(bundle)
    assert "label_choices" not in manifest and "round" not in manifest  # the manifest of that time
    ((model, entry),) = manifest["finetuned"].items()
    assert ScriptedEngine.artifact_dir(model) is None
    program = load_bundle(bundle)
    ((name, predictor),) = program.named_predictors()
    assert (name, predictor.lm.model, len(predictor.demos)) == ("classify", model, 2)
    assert ScriptedEngine.artifact_dir(model) == (bundle / entry["folder"]).resolve()
    rows = json.loads((bundle / entry["folder"] / "rows.json").read_text())
    assert len(rows) == 22
    assert [predict(program, row["inputs"]) for row in rows] == [row["outputs"] for row in rows]
    baseline = load_bundle(bundle, which="baseline")
    assert (baseline.classify.lm.model, baseline.classify.demos) == ("scripted/small", [])
