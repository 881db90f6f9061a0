"""A whole run on the real embedded models with a tiny budget: p -> w, export, reload in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.bundles.export import export_run
from core.config.defaults import default_config_dict, with_smoke_budget
from core.config.schema import parse_config
from core.lms import catalog
from core.run import RunManager
from core.store import Store
from core.store.records import RunStatus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def tiny_config(template: str = "classifier") -> dict:
    doc = default_config_dict(template)
    doc["name"] = "tiny embedded run"
    doc["lms"] = {"small": {"kind": "embedded", "model": "smollm2-135m"},
                  "large": {"kind": "embedded", "model": "smollm2-135m"}}
    # min_score 0 in the smoke budget: the step trains on every parsed trace of the tiny model
    return with_smoke_budget(doc, seed=1)


def test_p_w_on_the_embedded_model_then_export_and_reload(tmp_path: Path) -> None:
    manager = RunManager(Store(tmp_path / "runs.db"))
    doc = tiny_config()
    doc["optimizers"]["w"]["settings"]["max_length"] = 64  # shorter than every row: the run must say so
    # served as a LoRA adapter on the shipped GGUF (not the default merged GGUF, which tests/lms/test_lora.py serves):
    # the bundle carries adapter.gguf alone, and the fresh process below finds its base in the catalogue
    doc["optimizers"]["w"]["settings"]["serve"] = "lora"
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, timeout=1200)
    store = manager.store
    run = store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    rounds = store.list_rounds(run_id)
    assert [r.strategy for r in rounds] == ["", "p", "p -> w"]
    assert all(not r.eval_failed for r in rounds)
    assert rounds[0].predictor_models == {"classify": "embedded/smollm2-135m"}
    tuned = rounds[2].predictor_models["classify"]
    assert tuned.startswith("embedded/smollm2-135m:ft-")
    train = store.list_events(run_id, kinds=["train"])
    assert [e.data["step"] for e in train] == [1, 2] and all(e.data["loss"] > 0 for e in train)
    # the 3 validation examples' rows scored the untrained LoRA and the last step; the choice closes the list
    checkpoints = [e.data for e in store.list_events(run_id, kinds=["checkpoint"])]
    assert [c["step"] for c in checkpoints[:-1]] == [0, 2] and {c["held_out"] for c in checkpoints} == {3}
    assert checkpoints[-1]["chosen_step"] in (0, 2) and checkpoints[-1]["stopped"] == "budget"
    weights = store.list_artifacts(run_id, "weights")
    assert len(weights) == 1 and sorted(p.name for p in Path(weights[0].path).iterdir()) == ["adapter.gguf",
                                                                                            "meta.json"]
    assert rounds[2].lm_usage[tuned]["calls"] >= 3  # the fine-tuned model served the evaluation
    (cut,) = store.list_events(run_id, kinds=["truncated"])
    rows = json.loads((Path(weights[0].path) / "meta.json").read_text())["train"]["rows"]
    assert cut.data["model"] == "embedded/smollm2-135m"
    assert (cut.data["truncated"], cut.data["rows"], cut.data["max_length"]) == (rows, rows, 64)
    # every row was cut to exactly 64 tokens, so a row lost on average what it had beyond 64
    assert cut.data["cut_tokens"] == pytest.approx(cut.data["row_tokens"] - 64, abs=0.2)
    assert cut.data["max_cut_tokens"] >= cut.data["cut_tokens"] > 0
    assert cut.message.startswith(f"{rows} of {rows} training rows of embedded/smollm2-135m were longer than "
                                  "max_length=64 tokens and lost ~")
    assert {m: t.to_json() for m, t in rounds[2].details.truncated.items()} == {
        "embedded/smollm2-135m": {k: v for k, v in cut.data.items() if k != "model"}}
    # where it trained reaches the round (the Run page's caption): the device, precision and batch plan
    (trained,) = rounds[2].details.trained_on.values()
    from core.lms.lora import pick_device

    assert trained.startswith(f"trained on {pick_device().describe()}: {rows} rows, 2 steps of batch ")

    # Export the fine-tuned round's program whatever won, by making it the best artifact's source.
    (fine_tuned,) = [a for a in store.list_artifacts(run_id, "round_program") if a.meta.get("strategy") == "p -> w"]
    store.add_artifact(run_id, "best_program", fine_tuned.path, {"round": fine_tuned.meta["index"]})
    bundle = export_run(store, run_id, tmp_path / "bundle.zip")
    names = zipfile.ZipFile(bundle).namelist()
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    assert manifest["predictors"]["classify"]["model"] == tuned
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("weights/")) == ["adapter.gguf", "meta.json"]
    script = (
        "import json, sys\n"
        "from core.bundles.export import load_bundle, predict\n"
        "program = load_bundle(sys.argv[1])\n"
        "print(json.dumps(predict(program, {'text': 'The blender broke after one week. Very disappointed.'})))\n"
        "from core.lms.llama_models import loaded_models\n"
        "print(json.dumps([[m.path.name, m.lora_path and m.lora_path.name] for m in loaded_models()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(bundle)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    answer, loaded = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert isinstance(answer["label"], str) and answer["label"].strip()
    assert loaded == [[catalog.gguf_path("smollm2-135m").name, "adapter.gguf"]]  # the shipped GGUF + the bundle's
