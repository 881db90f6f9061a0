"""Sweeps in the run store: a job whose children are runs; its life is a run's; a run's test plan."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import config_to_dict, parse_config
from core.errors import StoreError
from core.plan.sweep import plan_sweep
from core.store import HEARTBEAT_TIMEOUT_S, Store
from core.store.evidence import ExampleResult, NewEvaluation, add_evaluation
from core.store.records import RunStatus
from core.store.sweep_records import (
    ChildResult,
    Comparison,
    SeedResult,
    StrategyResult,
    SweepSummary,
    TestPlan,
)

DOC = scripted_config_dict("classifier")
DOC["sweep"] = {"strategies": ["p", "w", "p -> w -> p"], "seeds": [0, 1]}
CONFIG = parse_config(DOC)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "studio.db")


def _sweep(store: Store) -> int:
    return store.create_sweep("my sweep", CONFIG, plan_sweep(CONFIG).children, base_dir="/data")


def test_a_sweep_and_its_children_round_trip(store: Store) -> None:
    sweep_id = _sweep(store)
    sweep = store.get_sweep(sweep_id)
    assert (sweep.name, sweep.status, sweep.config, sweep.base_dir) == ("my sweep", RunStatus.RUNNING, CONFIG, "/data")
    assert [(c.position, c.seed, c.strategy, c.covers, c.baseline_from, c.run_id) for c in sweep.children] == [
        (0, 0, "p -> w -> p", ("p", "p -> w -> p"), None, None),
        (1, 0, "w", ("w",), 0, None),
        (2, 1, "p -> w -> p", ("p", "p -> w -> p"), None, None),
        (3, 1, "w", ("w",), 2, None),
    ]
    run_id = store.create_run("child", CONFIG)
    store.set_child_run(sweep_id, 1, run_id)
    assert store.sweep_of_run(run_id) == store.sweep_children(sweep_id)[1]
    assert store.sweep_children(sweep_id)[1].run_id == run_id
    assert store.sweep_of_run(store.create_run("alone", CONFIG)) is None
    assert [s.id for s in store.list_sweeps()] == [sweep_id]
    store.delete_run(run_id)  # the child loses its run (a resume would run it again); the sweep stays
    assert store.sweep_children(sweep_id)[1].run_id is None
    with pytest.raises(StoreError, match="no child run at position 9"):
        store.set_child_run(sweep_id, 9, run_id)
    with pytest.raises(StoreError, match="no sweep with id 42"):
        store.get_sweep(42)


def test_a_sweep_config_with_a_secret_is_refused(store: Store) -> None:
    doc = config_to_dict(CONFIG)
    doc["lms"]["large"]["options"]["api_key"] = "sk-live-123456789"
    with pytest.raises(StoreError, match="secret values at"):
        store.create_sweep("leaky", parse_config(doc), [])


def test_an_ended_sweep_stays_ended_until_it_is_reopened(store: Store) -> None:
    sweep_id = _sweep(store)
    summary = SweepSummary(sweep_id, "failed", ("p",), (0,), (StrategyResult("p", 50.0, None, (SeedResult(0, "ok", 1, 1, "p", 60.0, 50.0, 1.5, None, 10),)),),
                           "p", (Comparison("p", "w", 2, 1, 0, 1, 50.0, 0.0, 100.0, 1.0, False, "no difference"),),
                           (ChildResult(0, "p", ("p",), 1, "finished", None, 3.0),), 1, 2, 3.0, 4.5)
    assert store.finish_sweep(sweep_id, RunStatus.FAILED, summary=summary, error="1 of 4 runs did not finish")
    assert not store.finish_sweep(sweep_id, RunStatus.FINISHED)  # terminal: never changes again
    sweep = store.get_sweep(sweep_id)
    assert (sweep.status, sweep.error, sweep.summary) == (RunStatus.FAILED, "1 of 4 runs did not finish", summary)
    assert sweep.summary.result("p").n_ok == 1
    assert not store.request_sweep_cancel(sweep_id)  # not active
    store.reopen_sweep(sweep_id)
    sweep = store.get_sweep(sweep_id)
    assert (sweep.status, sweep.error, sweep.finished_at) == (RunStatus.RUNNING, None, None)
    with pytest.raises(StoreError, match="is running; only failed, cancelled, interrupted sweeps can be resumed"):
        store.reopen_sweep(sweep_id)
    with pytest.raises(StoreError, match="terminal status"):
        store.finish_sweep(sweep_id, RunStatus.RUNNING)


def test_cancel_requests_and_silent_drivers(store: Store) -> None:
    sweep_id = _sweep(store)
    assert not store.sweep_cancel_requested(sweep_id)
    assert store.request_sweep_cancel(sweep_id) and store.sweep_cancel_requested(sweep_id)
    assert store.recover_interrupted_sweeps() == []  # its driver's heartbeat is fresh
    store.sweep_heartbeat([sweep_id], now=time.time() - HEARTBEAT_TIMEOUT_S - 5)
    assert store.recover_interrupted_sweeps() == [sweep_id]
    sweep = store.get_sweep(sweep_id)
    assert sweep.status is RunStatus.INTERRUPTED and f"sweep --resume {sweep_id}" in sweep.error
    store.reopen_sweep(sweep_id)
    assert not store.sweep_cancel_requested(sweep_id)  # a resumed sweep forgets the old request


def test_a_runs_test_plan_and_kept_rounds(store: Store) -> None:
    run_id = store.create_run("a run", CONFIG)
    assert store.test_plan(run_id) == TestPlan() and store.kept_rounds(run_id) == {}
    store.set_test_plan(run_id, TestPlan(("p", "p -> w"), baseline_from=7))
    assert store.test_plan(run_id) == TestPlan(("p", "p -> w"), 7)
    store.set_kept_rounds(run_id, {"p": 1, "p -> w": 0})
    assert store.kept_rounds(run_id) == {"p": 1, "p -> w": 0}
    with pytest.raises(StoreError, match="no run with id 99"):
        store.test_plan(99)


def test_test_evaluations_by_round_and_example_scores(store: Store) -> None:
    run_id = store.create_run("a run", CONFIG)
    results = [ExampleResult(i, {"text": str(i)}, {"label": "a"}, {"label": "a"}, float(i % 2), bool(i % 2))
               for i in range(4)]
    base = add_evaluation(store, NewEvaluation(run_id, "test", None, "test: baseline", "baseline", score=50.0), results)
    add_evaluation(store, NewEvaluation(run_id, "test", None, "test: best", "best", score=75.0), results)  # no round
    first = add_evaluation(store, NewEvaluation(run_id, "test", 2, "test: p -> w", "round 2", score=None), results)
    again = add_evaluation(store, NewEvaluation(run_id, "test", 2, "test: p -> w", "round 2", score=25.0), results)
    add_evaluation(store, NewEvaluation(run_id, "val", 1, "p", None, score=10.0), results)
    assert store.test_evaluations(run_id) == {0: (base, 50.0), 2: (again, 25.0)}
    assert first != again
    assert store.example_scores(base) == {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0}
