"""Integration tests of the runner on the scripted LM: rounds, roles, cancel, failures, recovery, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.bundles.export import export_run, load_bundle, predict
from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.lms.scripted import ScriptedEngine
from core.run import RunManager, best_index
from core.store import HEARTBEAT_TIMEOUT_S, Store
from core.store.records import RunStatus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def manager(tmp_path: Path) -> RunManager:
    return RunManager(Store(tmp_path / "runs.db"))


def _config(tag: str, template: str = "analyze_classify", **options):
    return parse_config(scripted_config_dict(template, tag=tag, **options))


def _wait_for_event(store: Store, run_id: int, kind: str, timeout: float = 30.0, where=lambda e: True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in store.list_events(run_id, kinds=[kind]):
            if where(event):
                return event
        time.sleep(0.02)
    raise AssertionError(f"no {kind!r} event in {timeout} s; events: {[e.message for e in store.list_events(run_id)]}")


def test_p_w_p_records_every_round_and_finetunes_only_the_small_lm(manager: RunManager) -> None:
    run_id = manager.start(_config("pwp"))
    assert manager.wait(run_id, timeout=120)
    store = manager.store
    run = store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    rounds = store.list_rounds(run_id)
    assert [r.strategy for r in rounds] == ["", "p", "p -> w", "p -> w -> p"]
    assert [r.step_key for r in rounds] == [None, "p", "w", "p"]
    assert [r.optimizer for r in rounds] == [None, "random_search", "finetune", "random_search"]
    assert all(r.score is not None and not r.eval_failed for r in rounds)
    best = [r for r in rounds if r.is_best]
    assert len(best) == 1 and best[0].strategy == run.best_strategy and best[0].score == run.best_score
    assert run.baseline_score == rounds[0].score
    assert run.test_baseline_score is not None and run.test_best_score is not None
    # only the small LM is fine-tuned; the large LM serves 'analyze' in every round
    assert all(r.predictor_models["analyze.predict"] == "scripted/large" for r in rounds)
    assert rounds[1].predictor_models["classify"] == "scripted/small"
    assert rounds[2].predictor_models["classify"].startswith("scripted/small:ft-")
    assert rounds[3].predictor_models["classify"] == rounds[2].predictor_models["classify"]
    finetuned = store.list_events(run_id, kinds=["finetuned"])
    assert [e.data["base"] for e in finetuned] == ["scripted/small"]
    traces = rounds[2].details.traces
    assert traces is not None and traces.collected == 40 and 0 < traces.kept <= 40
    assert traces.rows == {"scripted/small": traces.kept}
    assert rounds[2].details.finetuned == {"scripted/small": rounds[2].predictor_models["classify"]}
    assert store.list_events(run_id, kinds=["train"])  # training progress reported
    # per-round LM usage per model, with tokens
    assert rounds[0].lm_usage["scripted/large"]["calls"] == 20
    assert rounds[0].lm_usage["scripted/small"]["calls"] == 20
    assert rounds[0].lm_usage["scripted/large"]["input_tokens"] > 0
    assert "scripted/large" not in {m.split(":")[0] for m in rounds[2].lm_usage if ":ft-" in m}
    # a prompt step's demos are recorded per predictor
    assert set(rounds[1].demos) == {"analyze.predict", "classify"}


def test_fine_tuning_changes_the_small_models_answers(manager: RunManager) -> None:
    run_id = manager.start(_config("ft-effect", "classifier"))
    assert manager.wait(run_id, timeout=120)
    rounds = manager.store.list_rounds(run_id)
    # the classifier sample is learnable by memorisation: the weight step must raise the score
    assert rounds[2].score > rounds[1].score, [(r.strategy, r.score) for r in rounds]


def test_best_index_prefers_earlier_round_on_ties_and_skips_failures() -> None:
    assert best_index([10.0, 30.0, 30.0]) == 1
    assert best_index([None, 5.0]) == 1
    assert best_index([None, None]) is None


def test_cancel_during_a_prompt_step_keeps_the_best_so_far(manager: RunManager) -> None:
    run_id = manager.start(_config("cancel-p", delay=0.01))
    store = manager.store
    _wait_for_event(store, run_id, "step_start", where=lambda e: e.data.get("strategy") == "p")
    time.sleep(0.2)
    asked = time.monotonic()
    assert manager.cancel(run_id)
    assert manager.wait(run_id, timeout=10)
    stopped_in = time.monotonic() - asked
    assert stopped_in < 2.0, f"cancel took {stopped_in:.2f} s"
    run = store.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert run.best_strategy == "" and run.best_score == store.list_rounds(run_id)[0].score
    assert [r.strategy for r in store.list_rounds(run_id)] == [""]
    assert {a.kind for a in store.list_artifacts(run_id)} >= {"best_program", "baseline_program"}


def test_cancel_during_fine_tuning_stops_within_a_training_step(manager: RunManager) -> None:
    doc = scripted_config_dict("analyze_classify", tag="cancel-w", train_step_delay=0.3)
    doc["optimizers"] = {"p": {"type": "random_search"}, "w": {"type": "finetune", "settings": {"epochs": 20}}}
    run_id = manager.start(parse_config(doc))
    store = manager.store
    _wait_for_event(store, run_id, "train", timeout=60)
    asked = time.monotonic()
    manager.cancel(run_id)
    assert manager.wait(run_id, timeout=10)
    assert time.monotonic() - asked < 1.5  # one training step is 0.3 s
    run = store.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert [r.strategy for r in store.list_rounds(run_id)] == ["", "p"]
    assert not store.list_events(run_id, kinds=["finetuned"])
    assert run.best_strategy in ("", "p")


def test_an_lm_that_starts_failing_mid_run_fails_the_run_with_a_message(manager: RunManager) -> None:
    run_id = manager.start(_config("failing", fail_after=60))
    assert manager.wait(run_id, timeout=60)
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert "server stopped answering after 60 calls" in (run.error or "")
    assert "kept the best program so far" in run.error
    assert run.best_score == manager.store.list_rounds(run_id)[0].score  # the baseline is kept
    assert run.test_baseline_score is None  # the dead LM fails the test evaluation: not a silent 0
    assert any("test evaluation failed" in e.message for e in manager.store.list_events(run_id, kinds=["error"]))


def test_a_failed_evaluation_is_recorded_as_failed_not_as_zero(manager: RunManager) -> None:
    run_id = manager.start(_config("dead", fail_after=0))
    assert manager.wait(run_id, timeout=60)
    run = manager.store.get_run(run_id)
    baseline = manager.store.list_rounds(run_id)[0]
    assert baseline.eval_failed and baseline.score is None
    assert "server stopped answering" in baseline.eval_error
    assert run.status is RunStatus.FAILED and run.best_score is None


def test_queued_runs_on_cpu_models_wait_their_turn(manager: RunManager) -> None:
    doc = scripted_config_dict("classifier", tag="queue", delay=0.01)
    for spec in doc["lms"].values():
        spec["options"]["local_cpu"] = True  # behave like the embedded CPU models
    config = parse_config(doc)
    first = manager.start(config)
    second = manager.start(config)
    _wait_for_event(manager.store, first, "step_start")  # the first run holds the CPU models
    assert manager.store.get_run(first).status is RunStatus.RUNNING
    assert manager.store.get_run(second).status is RunStatus.QUEUED
    assert manager.store.get_run(second).queue_position == 1
    assert manager.wait(first, timeout=120) and manager.wait(second, timeout=120)
    a, b = manager.store.get_run(first), manager.store.get_run(second)
    assert a.status is b.status is RunStatus.FINISHED
    assert b.started_at >= a.finished_at


def _start_cli_run(tmp_path: Path, tag: str, **popen) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / f"{tag}.json"
    config.write_text(json.dumps(scripted_config_dict("analyze_classify", tag=tag, delay=0.02)))
    db = tmp_path / f"{tag}.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "core", "--db", str(db), "run", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if db.exists() and Store(db).list_runs() and Store(db).list_rounds(Store(db).list_runs()[0].id):
            return proc, db
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the run recorded no round in 60 s")


def test_a_killed_app_process_leaves_an_interrupted_run_with_its_rounds(tmp_path: Path) -> None:
    proc, db = _start_cli_run(tmp_path, "killed")
    proc.send_signal(signal.SIGKILL)  # the supervising process dies; its worker notices and stops
    proc.wait(timeout=10)
    store = Store(db)
    run = store.list_runs()[0]
    deadline = time.monotonic() + 10
    while store.get_run(run.id).status is RunStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)
    run = store.get_run(run.id)
    assert run.status is RunStatus.INTERRUPTED, run
    assert "supervised this run stopped" in run.error and f"resume {run.id}" in run.error
    rounds = store.list_rounds(run.id)
    assert len(rounds) >= 1
    assert run.baseline_score == rounds[0].score and run.best_score == max(r.score for r in rounds)
    # the best program so far is on disk: the interrupted run exports, and the manifest says which round
    bundle = export_run(store, run.id, tmp_path / "interrupted.zip")
    manifest = json.loads(__import__("zipfile").ZipFile(bundle).read("manifest.json"))
    assert manifest["status"] == "interrupted" and manifest["round"] == next(r.index for r in rounds if r.is_best)
    assert load_bundle(bundle).named_predictors()


def test_a_run_whose_owner_stopped_sending_heartbeats_is_recovered(tmp_path: Path) -> None:
    proc, db = _start_cli_run(tmp_path, "silent", start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the app and its worker die together (a container stops)
    proc.wait(timeout=10)
    store = Store(db)
    run = store.list_runs()[0]
    assert run.status is RunStatus.RUNNING  # nobody has noticed yet
    assert store.recover_interrupted() == []  # its heartbeat is still fresh: it may be alive elsewhere
    later = time.time() + HEARTBEAT_TIMEOUT_S + 1
    assert store.recover_interrupted(now=later) == [run.id]
    run = store.get_run(run.id)
    assert run.status is RunStatus.INTERRUPTED and "heartbeat" in run.error
    assert len(store.list_rounds(run.id)) >= 1
    assert run.baseline_score == store.list_rounds(run.id)[0].score


def test_export_then_load_in_a_fresh_process_gives_the_same_predictions(manager: RunManager, tmp_path: Path) -> None:
    run_id = manager.start(_config("export", "classifier"))
    assert manager.wait(run_id, timeout=120)
    bundle = export_run(manager.store, run_id, tmp_path / "bundle.zip")
    assert bundle.is_file()
    inputs = [{"text": "I love this kettle, it boils fast and looks great."},
              {"text": "The strap broke after two days; very disappointed."}]
    program = load_bundle(bundle)
    here = [predict(program, i) for i in inputs]
    assert any(":ft-" in (p.lm.model or "") for _, p in program.named_predictors())
    script = (
        "import json, sys\n"
        "from core.bundles.export import load_bundle, predict\n"
        "program = load_bundle(sys.argv[1])\n"
        "print(json.dumps([predict(program, i) for i in json.loads(sys.argv[2])]))\n"
    )
    # a fresh process that never saw the app or this run; the scripted engine options travel in program.json
    out = subprocess.run([sys.executable, "-c", script, str(bundle), json.dumps(inputs)], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there == json.loads(json.dumps(here))
    manifest = json.loads(__import__("zipfile").ZipFile(bundle).read("manifest.json"))
    assert manifest["best_strategy"] in ("p -> w", "p -> w -> p")
    (name, entry), = manifest["predictors"].items()
    assert entry["role"] == "small" and entry["model"].startswith("scripted/small:ft-")
    assert list(manifest["finetuned"].values())[0]["folder"].startswith("weights/")
    names = __import__("zipfile").ZipFile(bundle).namelist()
    assert not [n for n in names if n.endswith((".pkl", ".pickle"))]
    assert {"program.json", "manifest.json", "rounds.jsonl", "README.md", "config.json"} <= set(names)
    # the bundle's rounds carry their details in the stored form, as bundles always have
    lines = __import__("zipfile").ZipFile(bundle).read("rounds.jsonl").decode("utf-8").splitlines()
    stored = [r.details.to_json() for r in manager.store.list_rounds(run_id)]
    assert [json.loads(line)["details"] for line in lines] == stored
    assert {"traces", "finetuned", "phases", "lm_errors"} <= set(stored[2])


def test_scripted_engine_is_shared_across_deep_copies() -> None:
    import copy

    from core.lms.scripted import make_lm

    lm = make_lm("x", tag="copy")
    assert copy.deepcopy(lm).engine is lm.engine
    assert isinstance(lm.engine, ScriptedEngine)


def test_mipro_prompt_step_on_a_small_validation_set(manager: RunManager) -> None:
    doc = scripted_config_dict("classifier", tag="mipro")
    doc["data"]["split"] = {"train": 12, "val": 6, "test": 6, "seed": 0}
    doc["optimizers"] = {"m": {"type": "mipro", "settings": {"num_candidates": 3, "num_trials": 2}},
                         "w": {"type": "finetune"}}
    doc["strategy"] = "m -> w"
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, timeout=300)
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    rounds = manager.store.list_rounds(run_id)
    assert [(r.strategy, r.optimizer) for r in rounds] == [("", None), ("m", "mipro"), ("m -> w", "finetune")]
    # MIPROv2 ran its trials on the assigned LM (the program's only predictor is on 'small')
    assert set(rounds[1].lm_usage) >= {"scripted/small"}
