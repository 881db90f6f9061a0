"""A bundle of a run on your own model carries what a fresh machine needs without the model's folder: the
converted GGUF of each local base model it is served by (or that a LoRA fine-tune is applied to); a merged
fine-tune only its own GGUF. Loading registers them under their recorded keys, as untrusted data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.bundles.export import export_run, load_bundle, read_manifest
from core.config.defaults import scripted_config_dict
from core.errors import ExportError
from core.lms import local
from core.lms.lora import ensure_hf_cache
from core.store import Store
from tests.security_helpers import finished_run

ROOT = Path(__file__).resolve().parents[2]
LLAMA_ENGINE = "core.lms.embedded:LlamaEngine"
LOAD = """
import json, sys
from pathlib import Path
from core.bundles.export import load_bundle, predict
from core.lms import local
answers = {}
for bundle in sys.argv[1:]:
    program = load_bundle(bundle)
    label = predict(program, {"text": "The blender broke after one week. Very disappointed."})["label"]
    answers[bundle] = {"label": label, "model": program.classify.lm.model,
                       "served_from": {k: str(local.local_model(k).gguf_source) for k in local.local_keys()}}
print(json.dumps(answers))
"""


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local models registered by a test are forgotten after it."""
    monkeypatch.setattr(local, "_registered", dict(local._registered))


def local_run(tmp_path: Path) -> tuple[Store, int, str]:
    """A finished run whose ``classify`` is served by the Studio's SmolLM2 folder given as a ``local`` LM (the
    program is built as a run builds it; no call is made); the model's key."""
    doc = scripted_config_dict("classifier", tag="local")
    doc["lms"]["small"] = {"kind": "local", "path": str(ensure_hf_cache("smollm2-135m"))}
    store, run_id = finished_run(tmp_path, doc)
    (key,) = [k for k in local.local_keys() if k.startswith("smollm2-135m-hf-")]
    local.local_gguf(key)  # converted once into the shared model cache (kept between test sessions)
    return store, run_id, key


def with_fine_tune(store: Store, run_id: int, tmp_path: Path, key: str, kind: str) -> str:
    """The run's best ``classify`` served by a fine-tune of ``key`` of ``kind``, its weights recorded as the recorder
    records them: a merged one is a whole GGUF (the base's own, copied), a LoRA one an adapter file."""
    model = f"local/{key}:ft-{kind[:4]}0000"
    folder = tmp_path / "weights" / f"{key}_ft-{kind}"
    folder.mkdir(parents=True)
    if kind == "merged":
        shutil.copyfile(local.local_gguf(key), folder / "model.gguf")
        meta = {"base": key, "kind": "merged", "file": "model.gguf"}
    else:
        (folder / "adapter.gguf").write_bytes(b"GGUF adapter stand-in")
        meta = {"base": key, "kind": "lora", "file": "adapter.gguf"}
    (folder / "meta.json").write_text(json.dumps(meta))
    store.add_artifact(run_id, "weights", folder, {"model": model, "base": f"local/{key}", "engine": LLAMA_ENGINE})
    best = Path(store.list_artifacts(run_id, "best_program")[-1].path)
    state = json.loads(best.read_text())
    state["classify"]["lm"]["model"] = model
    best.write_text(json.dumps(state))
    return model


@pytest.mark.slow
def test_a_local_model_and_its_merged_fine_tune_run_from_their_bundles_in_a_fresh_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, run_id, key = local_run(tmp_path)
    served = local.local_gguf(key)
    monkeypatch.setattr(local, "_registered", {})  # the export runs in a process that never built the LM
    base_bundle = export_run(store, run_id, tmp_path / "base-bundle")
    entry = read_manifest(base_bundle)["local_models"][key]
    assert entry["gguf"] == f"models/{key}/model-Q4_K_M.gguf" and entry["base_weights"] is True
    assert (entry["architecture"], entry["parameters"]) == ("LlamaForCausalLM", 134515008)
    assert (base_bundle / entry["gguf"]).read_bytes() == served.read_bytes()
    assert "chat_template" not in entry  # the converter wrote the folder's template into the GGUF

    tuned = with_fine_tune(store, run_id, tmp_path, key, "merged")
    merged_bundle = export_run(store, run_id, tmp_path / "merged-bundle.zip")
    manifest = read_manifest(merged_bundle)
    folder = manifest["finetuned"][tuned]["folder"]
    assert manifest["local_models"][key]["gguf"] == f"{folder}/model.gguf"  # its own GGUF: no base weights
    assert manifest["local_models"][key]["base_weights"] is False

    fresh = {**os.environ, "PYTHONPATH": str(ROOT), "STUDIO_HOME": str(tmp_path / "elsewhere"),
             "STUDIO_MODEL_CACHE": str(tmp_path / "empty-cache")}  # nothing converted on this machine
    out = subprocess.run([sys.executable, "-c", LOAD, str(merged_bundle), str(base_bundle)], cwd=tmp_path, env=fresh,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    answers = json.loads(out.stdout.strip().splitlines()[-1])
    base, merged = answers[str(base_bundle)], answers[str(merged_bundle)]
    assert base["model"] == f"local/{key}" and merged["model"] == tuned
    assert Path(merged["served_from"][key]).name == "model.gguf"  # the extracted zip's fine-tune GGUF
    # a later bundle with the base's own weights replaces a key that only a merged fine-tune's GGUF registered
    assert base["served_from"] == {key: str((base_bundle / entry["gguf"]).resolve())}
    for answer in (base, merged):
        assert isinstance(answer["label"], str) and answer["label"].strip()
    assert list((tmp_path / "empty-cache").rglob("*.gguf")) == []  # nothing was converted there


@pytest.mark.slow
def test_a_lora_fine_tune_carries_its_base_gguf(tmp_path: Path) -> None:
    store, run_id, key = local_run(tmp_path)
    tuned = with_fine_tune(store, run_id, tmp_path, key, "lora")
    bundle = export_run(store, run_id, tmp_path / "bundle")
    manifest = read_manifest(bundle)
    assert manifest["local_models"][key]["gguf"] == f"models/{key}/model-Q4_K_M.gguf"
    assert (bundle / manifest["finetuned"][tuned]["folder"] / "adapter.gguf").is_file()
    assert (bundle / "models" / key / "model-Q4_K_M.gguf").stat().st_size == local.local_gguf(key).stat().st_size


@pytest.mark.slow
def test_a_restarted_app_serves_the_run_s_local_model_and_its_fine_tune_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.bundles.saved import load_run_program
    from core.lms.embedded import LlamaEngine

    store, run_id, key = local_run(tmp_path)
    tuned = with_fine_tune(store, run_id, tmp_path, key, "merged")
    monkeypatch.setattr(local, "_registered", {})  # the Results page of an app started after the run
    program = load_run_program(store, run_id, "best_program")
    assert program.classify.lm.model == tuned
    assert local.local_keys() == [key] and local.local_model(key).hf_dir == ensure_hf_cache("smollm2-135m")
    assert LlamaEngine.shared().artifact_dir(tuned) == tmp_path / "weights" / f"{key}_ft-merged"


def scripted_bundle(tmp_path: Path, local_models: object) -> Path:
    store, run_id = finished_run(tmp_path, scripted_config_dict("classifier", tag="local"))
    bundle = export_run(store, run_id, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["local_models"] == {}  # a run without local models carries none
    manifest["local_models"] = local_models
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize(("entries", "message"), [
    ({"mine-1a2b3c4d": {"gguf": "../outside.gguf"}}, "leaves the bundle"),
    ({"mine-1a2b3c4d": {"gguf": "/etc/passwd"}}, "leaves the bundle"),
    ({"mine-1a2b3c4d": {"gguf": "program.json"}}, "is not a .gguf file of the bundle"),
    ({"Mine Model": {"gguf": "models/m.gguf"}}, "must be lowercase letters, digits"),
    ({"mine-1a2b3c4d": {"gguf": "models/m.gguf", "chat_template": "{{ evil }}"}}, "must be an object of strings"),
    ({"mine-1a2b3c4d": "models/m.gguf"}, "must be an object with 'gguf'"),
    (["mine-1a2b3c4d"], "'local_models' must map model keys"),
])
def test_a_bundle_s_local_models_are_data_checked_before_use(tmp_path: Path, entries: object, message: str) -> None:
    bundle = scripted_bundle(tmp_path, entries)
    (bundle / "models").mkdir()
    (bundle / "models" / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "outside.gguf").write_bytes(b"GGUF")
    with pytest.raises(ExportError, match=message) as info:
        load_bundle(bundle)
    assert "\n" not in str(info.value)
    assert local.local_keys() == sorted(local._registered)  # nothing of the bundle was registered
    assert "mine-1a2b3c4d" not in local.local_keys() and "Mine Model" not in local.local_keys()
