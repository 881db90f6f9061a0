"""Your own model, the whole path, without any download: tiny randomly initialised models of three architectures
that llama.cpp serves (built by ``tests/tiny_models.py`` and saved as Hugging Face folders) are checked, converted
by llama.cpp's own converter, answer through the grammar, take a weight step, serve the fine-tune, and export a
bundle that loads and answers in a fresh process that has neither the folder nor the model cache. The Studio's
dequantized SmolLM2 folder (a real model) then runs ``p -> w -> p`` as a user's folder would.

Qwen2 is not among the tiny three, though the converter takes ``Qwen2ForCausalLM`` (``core.lms.convert`` lists
it): transformers gives a ``qwen2`` folder its Qwen tokenizer class, whose pre-tokenizer over the only tokenizer
the tests have (SmolLM2's) gives llama.cpp's converter a hash it does not know; a real Qwen folder's is known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.bundles.export import export_run
from core.config.defaults import default_config_dict, with_smoke_budget
from core.config.schema import parse_config
from core.lms import local
from core.lms.lora import ensure_hf_cache
from core.run import RunManager
from core.store import Store
from core.store.records import RunStatus
from tests.tiny_models import ARCHS, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

HF_ARCH = {"llama": "LlamaForCausalLM", "smollm3": "SmolLM3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
LABELS = ("positive", "negative", "neutral")
LOAD = """
import json, sys
from core.bundles.export import load_bundle, predict
from core.lms import local
program = load_bundle(sys.argv[1])
answer = predict(program, {"text": "The blender broke after one week. Very disappointed."})
print(json.dumps({"label": answer["label"], "model": program.classify.lm.model, "keys": local.local_keys()}))
"""


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny folder per architecture (a fixed seed: the same bytes, so the same content key, every session)."""
    tokenizer = ensure_hf_cache("smollm2-135m")
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(arch, root / arch, tokenizer) for arch in ARCHS}


def run_on(doc: dict, tmp_path: Path) -> tuple[Store, int]:
    manager = RunManager(Store(tmp_path / "runs.db"))
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, timeout=900)
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    return manager.store, run_id


def load_in_a_fresh_process(bundle: Path, tmp_path: Path) -> dict:
    """``load_bundle`` + ``predict`` in a new interpreter whose model cache is empty."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STUDIO_MODEL_CACHE": str(tmp_path / "empty-cache"),
           "STUDIO_HOME": str(tmp_path / "fresh-home")}
    out = subprocess.run([sys.executable, "-c", LOAD, str(bundle)], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch", ARCHS)
def test_a_tiny_model_of_each_architecture_goes_the_whole_path(arch: str, tiny_folders: dict[str, Path],
                                                               tmp_path: Path) -> None:
    folder = tiny_folders[arch]
    model = local.inspect_local(folder, training=True)
    assert (model.arch, model.finetunable, model.hf_dir) == (HF_ARCH[arch], True, folder)

    doc = with_smoke_budget(default_config_dict("classifier"), train=3, val=1, test=1)
    doc["name"] = f"tiny {arch}"
    doc["strategy"] = "w"
    doc["lms"] = {role: {"kind": "local", "path": str(folder), "max_tokens": 64} for role in ("large", "small")}
    store, run_id = run_on(doc, tmp_path)

    rounds = store.list_rounds(run_id)
    assert [r.strategy for r in rounds] == ["", "w"]
    key = local.register_local(model)
    assert rounds[0].predictor_models == {"classify": f"local/{key}"}
    assert rounds[0].lm_usage[f"local/{key}"]["calls"] >= 1  # the converted model answered through the grammar
    assert not any(r.eval_failed for r in rounds)
    tuned = rounds[1].predictor_models["classify"]
    assert tuned.startswith(f"local/{key}:ft-")
    assert rounds[1].lm_usage[tuned]["calls"] >= 1  # the fine-tune served the evaluation
    (weights,) = store.list_artifacts(run_id, "weights")
    meta = json.loads((Path(weights.path) / "meta.json").read_text())
    assert meta["base"] == key and meta["train"]["steps"] >= 1
    assert (Path(weights.path) / meta["file"]).is_file()

    # the bundle of the fine-tuned round, whichever round won on validation
    best = Path(store.list_artifacts(run_id, "best_program")[-1].path)
    state = json.loads(best.read_text())
    state["classify"]["lm"]["model"] = tuned
    best.write_text(json.dumps(state))
    bundle = export_run(store, run_id, tmp_path / "bundle.zip")
    answer = load_in_a_fresh_process(bundle, tmp_path)
    assert answer["model"] == tuned and key in answer["keys"]
    assert answer["label"] in LABELS  # random weights, but the grammar keeps the answer to the labels


def test_the_studio_s_smollm2_folder_runs_p_w_p_as_a_user_s_own_model(tmp_path: Path) -> None:
    folder = ensure_hf_cache("smollm2-135m")
    doc = with_smoke_budget(default_config_dict("classifier"), train=4, val=2, test=2, seed=1)
    doc["name"] = "SmolLM2 as your own model"
    doc["strategy"] = "p -> w -> p"
    doc["lms"] = {role: {"kind": "local", "path": str(folder)} for role in ("large", "small")}
    store, run_id = run_on(doc, tmp_path)
    rounds = store.list_rounds(run_id)
    assert [r.strategy for r in rounds] == ["", "p", "p -> w", "p -> w -> p"]
    key = local.register_local(local.inspect_local(folder))
    assert rounds[1].predictor_models == {"classify": f"local/{key}"}
    tuned = rounds[2].predictor_models["classify"]
    assert tuned.startswith(f"local/{key}:ft-") and rounds[3].predictor_models["classify"] == tuned
    assert all(not r.eval_failed for r in rounds)
    assert rounds[3].lm_usage[tuned]["calls"] >= 1
    run = store.get_run(run_id)
    assert run.test_best_score is not None and run.test_baseline_score is not None
