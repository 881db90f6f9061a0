"""Resume: a run killed after round k and resumed gives the rounds and scores of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import dspy
import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.errors import StoreError
from core.run import RoundRecorder, RunManager, RunObserver
from core.run.recorder import BestRound
from core.run.resume import ReplayedRound
from core.store import Store
from core.store.records import Round, RunStatus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def manager(tmp_path: Path) -> RunManager:
    return RunManager(Store(tmp_path / "runs.db"))


def _comparable(round_: Round) -> dict:
    """What must be equal between two runs (fine-tuned model names carry a random suffix)."""
    models = {name: re.sub(r":ft-[0-9a-f]+$", ":ft-*", model) for name, model in round_.predictor_models.items()}
    return {
        "index": round_.index, "strategy": round_.strategy, "optimizer": round_.optimizer, "score": round_.score,
        "eval_failed": round_.eval_failed, "is_best": round_.is_best, "models": models, "demos": round_.demos,
        "instructions": round_.instructions,
    }


def _crashed_run(manager: RunManager, tmp_path: Path, crash_at_round: int) -> int:
    marker = tmp_path / f"crashed-{crash_at_round}"
    config = parse_config(scripted_config_dict("analyze_classify", tag=f"resume-{crash_at_round}",
                                               crash_at_round=crash_at_round, crash_marker=str(marker)))
    run_id = manager.start(config)
    assert manager.wait(run_id, timeout=120)
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FAILED and "SIGKILL" in run.error, run.error
    assert marker.is_file()
    assert len(manager.store.list_rounds(run_id)) == crash_at_round
    return run_id


@pytest.mark.parametrize("crash_at_round", [2, 3])
def test_a_resumed_run_equals_the_uninterrupted_run(manager: RunManager, tmp_path: Path, crash_at_round: int) -> None:
    store = manager.store
    reference = manager.start(parse_config(scripted_config_dict("analyze_classify", tag="resume-reference")))
    assert manager.wait(reference, timeout=120)
    assert store.get_run(reference).status is RunStatus.FINISHED
    run_id = _crashed_run(manager, tmp_path, crash_at_round)
    finished_before = store.list_rounds(run_id)

    assert manager.resume(run_id) == run_id
    assert manager.wait(run_id, timeout=120)
    run, ref = store.get_run(run_id), store.get_run(reference)
    assert run.status is RunStatus.FINISHED, run.error
    rounds = store.list_rounds(run_id)
    assert [_comparable(r) for r in rounds] == [_comparable(r) for r in store.list_rounds(reference)]
    assert (run.best_strategy, run.best_score, run.baseline_score) == (ref.best_strategy, ref.best_score,
                                                                       ref.baseline_score)
    assert (run.test_baseline_score, run.test_best_score) == (ref.test_baseline_score, ref.test_best_score)
    # the earlier rounds were kept as they were (not run again), the new ones appended
    assert [(r.started_at, r.score) for r in rounds[:crash_at_round]] == [(r.started_at, r.score)
                                                                         for r in finished_before]
    if crash_at_round == 3:  # resumed after the weight step: the same fine-tuned weights serve round 3
        assert rounds[3].predictor_models["classify"] == rounds[2].predictor_models["classify"]
        assert len(store.list_events(run_id, kinds=["finetuned"])) == 1
    messages = [e.message for e in store.list_events(run_id, kinds=["status"])]
    assert any(f"resuming after round {crash_at_round - 1}" in m for m in messages)


def test_replayed_rounds_keep_the_best_on_a_replayed_round(tmp_path: Path) -> None:
    """The resumed attempt's recorder is told which rounds it replays: a new round scoring below the
    best replayed one leaves is_best, best.json and the round event on the replayed round."""
    store = Store(tmp_path / "runs.db")
    config = parse_config(scripted_config_dict("analyze_classify", tag="replayed-best"))
    run_id = store.create_run("replayed-best", config)
    folder = tmp_path / "run"
    programs = [dspy.Predict(dspy.Signature("question -> answer", f"round {i}")) for i in range(3)]

    def recorder() -> RoundRecorder:
        cancel = threading.Event()
        return RoundRecorder(store, run_id, config, RunObserver(cancel), folder, cancel)

    earlier = recorder()  # the attempt that died after two rounds
    earlier.round_finished(0, "", 40.0, programs[0])
    earlier.round_finished(1, "p", 70.0, programs[1])
    resumed = recorder()
    resumed.replayed([ReplayedRound(0, "", 40.0, programs[0]), ReplayedRound(1, "p", 70.0, programs[1])])
    resumed.round_finished(2, "p -> w", 55.0, programs[2])

    assert [r.is_best for r in store.list_rounds(run_id)] == [False, True, False]
    assert resumed.best == BestRound(index=1, strategy="p", score=70.0)
    assert json.loads((folder / "best.json").read_text()) == json.loads((folder / "rounds" / "1.json").read_text())
    assert store.list_events(run_id, kinds=["round"])[-1].data["best_index"] == 1
    assert [e.data for e in store.list_events(run_id, kinds=["status"])] == [{"replayed": 2}]


def test_a_resumed_round_below_the_replayed_best_adds_no_second_best_program(tmp_path: Path) -> None:
    """best.json already holds the replayed best: a new, lower round neither rewrites it nor records it
    again as a best_program artifact (one artifact per change of the best)."""
    store = Store(tmp_path / "runs.db")
    config = parse_config(scripted_config_dict("analyze_classify", tag="replayed-best-artifact"))
    run_id = store.create_run("replayed-best-artifact", config)
    folder = tmp_path / "run"
    programs = [dspy.Predict(dspy.Signature("question -> answer", f"round {i}")) for i in range(4)]

    def recorder() -> RoundRecorder:
        cancel = threading.Event()
        return RoundRecorder(store, run_id, config, RunObserver(cancel), folder, cancel)

    def best_rounds() -> list[int]:
        return [a.meta["round"] for a in store.list_artifacts(run_id, "best_program")]

    earlier = recorder()
    earlier.round_finished(0, "", 40.0, programs[0])
    earlier.round_finished(1, "p", 70.0, programs[1])
    assert best_rounds() == [0, 1]
    saved_at = (folder / "best.json").stat().st_mtime_ns
    resumed = recorder()
    resumed.replayed([ReplayedRound(0, "", 40.0, programs[0]), ReplayedRound(1, "p", 70.0, programs[1])])
    resumed.round_finished(2, "p -> w", 55.0, programs[2])
    assert best_rounds() == [0, 1]
    assert (folder / "best.json").stat().st_mtime_ns == saved_at
    resumed.round_finished(3, "p -> w -> p", 80.0, programs[3])  # a new best is still saved
    assert best_rounds() == [0, 1, 3]
    assert json.loads((folder / "best.json").read_text()) == json.loads((folder / "rounds" / "3.json").read_text())


def test_a_resume_saves_the_replayed_best_the_earlier_attempt_did_not(tmp_path: Path) -> None:
    """An attempt that died after recording a round but before saving it as best.json: the resumed
    attempt's next round saves the replayed best."""
    store = Store(tmp_path / "runs.db")
    config = parse_config(scripted_config_dict("analyze_classify", tag="replayed-best-unsaved"))
    run_id = store.create_run("replayed-best-unsaved", config)
    folder = tmp_path / "run"
    programs = [dspy.Predict(dspy.Signature("question -> answer", f"round {i}")) for i in range(3)]
    cancel = threading.Event()
    earlier = RoundRecorder(store, run_id, config, RunObserver(cancel), folder, cancel)
    earlier.round_finished(0, "", 40.0, programs[0])
    # round 1 reached the store and its snapshot the disk, but not best.json
    (folder / "rounds").mkdir(exist_ok=True)
    programs[1].save(str(folder / "rounds" / "1.json"))
    store.add_round(Round(run_id=run_id, index=1, strategy="p", step_key="p", score=70.0))
    resumed = RoundRecorder(store, run_id, config, RunObserver(cancel), folder, cancel)
    resumed.replayed([ReplayedRound(0, "", 40.0, programs[0]), ReplayedRound(1, "p", 70.0, programs[1])])
    resumed.round_finished(2, "p -> w", 55.0, programs[2])
    assert [a.meta["round"] for a in store.list_artifacts(run_id, "best_program")] == [0, 1]
    assert json.loads((folder / "best.json").read_text()) == json.loads((folder / "rounds" / "1.json").read_text())


def test_resume_from_the_command_line(manager: RunManager, tmp_path: Path) -> None:
    run_id = _crashed_run(manager, tmp_path, 2)
    out = subprocess.run([sys.executable, "-m", "core", "--db", str(manager.store.path), "resume", str(run_id)],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["status"] == "finished" and summary["run_id"] == run_id
    assert [r["strategy"] for r in summary["rounds"]] == ["", "p", "p -> w", "p -> w -> p"]


def test_only_failed_cancelled_or_interrupted_runs_can_be_resumed(manager: RunManager) -> None:
    run_id = manager.start(parse_config(scripted_config_dict("classifier", tag="resume-finished")))
    assert manager.wait(run_id, timeout=120)
    with pytest.raises(StoreError, match=f"run {run_id} is finished; only failed, cancelled, interrupted runs"):
        manager.resume(run_id)
    with pytest.raises(StoreError, match="no run with id 999"):
        manager.resume(999)


def test_the_run_page_resumes_a_crashed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from core.paths import db_path
    from core.run import get_manager

    monkeypatch.chdir(ROOT)
    manager = get_manager(db_path())  # the page's manager: the process-wide one of $STUDIO_HOME
    run_id = _crashed_run(manager, tmp_path, 2)
    at = AppTest.from_file(str(ROOT / "pages" / "run.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert any("SIGKILL" in e.value for e in at.error)
    at.button(key=f"resume_{run_id}").click().run()
    assert not at.exception, at.exception
    assert manager.wait(run_id, timeout=120)
    assert manager.store.get_run(run_id).status is RunStatus.FINISHED
    at.run()
    assert not any(b.key == f"resume_{run_id}" for b in at.button)  # a finished run has nothing to resume
    assert any("4 of 4 rounds" in c.value for c in at.caption)
