"""Sweeps end to end on the scripted LM: strategies x seeds as one job whose children are runs.

Shared work (one run per seed holds the strategies it extends; a seed's baseline evaluated once),
a strategy read from a longer run equals a run of it alone, a failed child is recorded failed while the
others finish, cancel stops the sweep and starts no more runs, resume finishes what did not finish.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.errors import ConfigError
from core.evidence.sweep import compare_strategies, summarize_sweep
from core.run import RunManager
from core.run.executors import EXECUTORS, LocalExecutor
from core.run.sweep import SweepManager
from core.store import Store
from core.store.records import RunStatus


@pytest.fixture
def sweeps(tmp_path: Path) -> SweepManager:
    return SweepManager(RunManager(Store(tmp_path / "runs.db")))


def _config(strategies: list[str], seeds: list[int], tag: str, **options: Any):
    doc = scripted_config_dict("classifier", tag=tag, **options)
    doc["sweep"] = {"strategies": strategies, "seeds": seeds}
    return parse_config(doc)


def _evaluations(store: Store, run_ids: list[int], split: str, round_index: int | None = None,
                 program: str | None = None) -> int:
    """How many evaluations of ``split`` these runs recorded (of round ``round_index`` or of ``program``)."""
    sql = f"select count(*) from evaluations where split = ? and run_id in ({', '.join('?' * len(run_ids))})"
    params: list[Any] = [split, *run_ids]
    if round_index is not None:
        sql += " and round_index = ?"
        params.append(round_index)
    if program is not None:
        sql += " and program = ?"
        params.append(program)
    return store.db.execute(sql, params).fetchone()[0]


def _finished(sweeps: SweepManager, sweep_id: int, timeout: float = 240) -> Any:
    assert sweeps.wait(sweep_id, timeout=timeout)
    return sweeps.store.get_sweep(sweep_id)


def test_two_strategies_two_seeds_through_the_api(sweeps: SweepManager) -> None:
    store = sweeps.store
    sweep_id = sweeps.start(_config(["p", "w"], [0, 1], "sweep-api"))
    sweep = _finished(sweeps, sweep_id)
    assert sweep.status is RunStatus.FINISHED, sweep.error
    assert [(c.seed, c.strategy, c.baseline_from) for c in sweep.children] == [(0, "p", None), (0, "w", 0),
                                                                               (1, "p", None), (1, "w", 2)]
    runs = [store.get_run(c.run_id) for c in sweep.children]
    assert all(r.status is RunStatus.FINISHED for r in runs)
    assert [(r.strategy, r.config.seed, r.config.sweep) for r in runs] == [("p", 0, None), ("w", 0, None),
                                                                          ("p", 1, None), ("w", 1, None)]
    for seed in (0, 1):  # each seed's baseline is evaluated once on validation and once on test
        lender, borrower = (c.run_id for c in sweep.children if c.seed == seed)
        assert _evaluations(store, [lender, borrower], "val", round_index=0) == 1
        assert _evaluations(store, [lender, borrower], "test", program="baseline") == 1
        assert store.list_rounds(borrower)[0].score == store.list_rounds(lender)[0].score
        assert any("baseline: reused from run" in e.message for e in store.list_events(borrower))
    summary = sweep.summary
    assert summary == summarize_sweep(store, sweep_id)  # the stored summary is the store's truth
    assert (summary.status, summary.child_runs, summary.standalone_runs) == ("finished", 4, 4)
    for result in summary.results:
        assert [s.status for s in result.seeds] == ["ok", "ok"]
        for s in result.seeds:  # the round a run of the strategy alone keeps, scored on test
            assert s.test_score == store.test_evaluations(s.run_id)[s.round_index][1]
            assert s.round_index == store.kept_rounds(s.run_id)[result.strategy]
        scores = [s.test_score for s in result.seeds]
        assert result.mean == pytest.approx(sum(scores) / 2)
        assert result.sd == pytest.approx(abs(scores[0] - scores[1]) / 2 ** 0.5)
        assert result.wall_s > 0 and result.calls > 0
    assert summary.best == max(summary.results, key=lambda r: r.mean).strategy
    [comparison] = summary.comparisons
    assert {comparison.a, comparison.b} == {"p", "w"} and comparison.a == summary.best
    assert comparison.pairs == 2 * len(store.test_evaluations(runs[0].id) and
                                       store.example_scores(store.test_evaluations(runs[0].id)[0][0]))
    assert comparison == compare_strategies(store, sweep_id, comparison.a, comparison.b)
    assert comparison.sentence


def test_strategies_that_extend_each_other_share_one_run_per_seed(sweeps: SweepManager) -> None:
    store = sweeps.store
    sweep_id = sweeps.start(_config(["p", "p -> w", "p -> w -> p"], [0, 1], "sweep-share"))
    sweep = _finished(sweeps, sweep_id)
    assert sweep.status is RunStatus.FINISHED, sweep.error
    assert [(c.seed, c.strategy) for c in sweep.children] == [(0, "p -> w -> p"), (1, "p -> w -> p")]
    run_ids = [c.run_id for c in sweep.children]
    for run_id in run_ids:
        assert _evaluations(store, [run_id], "val") == 4  # baseline, p, p -> w, p -> w -> p: each once
        assert _evaluations(store, [run_id], "val", round_index=0) == 1
        assert _evaluations(store, [run_id], "test", round_index=0) == 1
        kept = store.kept_rounds(run_id)
        assert set(kept) == {"p", "p -> w", "p -> w -> p"}
        assert _evaluations(store, [run_id], "test") == len({0, *kept.values()})  # each needed round once
    # p -> w read from the p -> w -> p run of seed 1 is what a run of p -> w alone with seed 1 gives
    alone = sweeps.runs.start(parse_config({**scripted_config_dict("classifier", tag="sweep-share"),
                                           "strategy": "p -> w", "seed": 1}))
    assert sweeps.runs.wait(alone, timeout=120)
    run = store.get_run(alone)
    shared = sweep.summary.result("p -> w").seeds[1]
    assert [r.score for r in store.list_rounds(alone)] == [r.score for r in store.list_rounds(run_ids[1])][:3]
    assert (run.best_strategy, run.best_score, run.test_best_score) == (shared.round_strategy, shared.val_score,
                                                                        shared.test_score)


def test_a_failed_child_is_recorded_failed_the_others_finish_and_resume_finishes_it(
        sweeps: SweepManager, tmp_path: Path) -> None:
    store = sweeps.store
    marker = tmp_path / "crashed"  # the first run to reach round 2 dies there (SIGKILL), once
    config = _config(["p", "p -> w"], [0, 1], "sweep-fail", crash_at_round=2, crash_marker=str(marker))
    sweep_id = sweeps.start(config)
    sweep = _finished(sweeps, sweep_id)
    first, second = sweep.children
    assert store.get_run(first.run_id).status is RunStatus.FAILED and "SIGKILL" in store.get_run(first.run_id).error
    assert store.get_run(second.run_id).status is RunStatus.FINISHED
    assert sweep.status is RunStatus.FAILED
    assert sweep.error.startswith("1 of 2 runs did not finish: 'p -> w' with seed 0 (run ")
    for result in sweep.summary.results:
        assert [s.status for s in result.seeds] == ["failed", "ok"]
        assert result.mean == result.seeds[1].test_score and result.sd is None
    assert len(store.list_rounds(first.run_id)) == 2  # nothing finished is lost
    assert sweeps.resume(sweep_id) == sweep_id
    sweep = _finished(sweeps, sweep_id)
    assert sweep.status is RunStatus.FINISHED, sweep.error
    assert [c.run_id for c in sweep.children] == [first.run_id, second.run_id]  # the same runs, continued
    assert any(e.message == f"resumed by sweep {sweep_id}" for e in store.list_events(first.run_id))
    assert not any("resumed" in e.message for e in store.list_events(second.run_id))  # finished: not run again
    assert all(s.status == "ok" for r in sweep.summary.results for s in r.seeds)


def test_cancel_stops_the_running_child_and_starts_no_more_then_resume_finishes(sweeps: SweepManager) -> None:
    store = sweeps.store
    sweep_id = sweeps.start(_config(["p", "w"], [0], "sweep-cancel", delay=0.05))
    deadline = time.monotonic() + 60
    while not (store.sweep_children(sweep_id)[0].run_id and store.list_rounds(store.sweep_children(sweep_id)[0].run_id)):
        assert time.monotonic() < deadline, "the first run never recorded its baseline"
        time.sleep(0.1)
    assert sweeps.cancel(sweep_id)
    sweep = _finished(sweeps, sweep_id, timeout=60)
    first, second = sweep.children
    assert sweep.status is RunStatus.CANCELLED and sweep.error.startswith("cancelled by the user; 0 of 2 runs")
    assert store.get_run(first.run_id).status is RunStatus.CANCELLED
    assert second.run_id is None  # never started
    assert not sweeps.cancel(sweep_id)  # ended: nothing to cancel
    sweeps.resume(sweep_id)
    sweep = _finished(sweeps, sweep_id)
    assert sweep.status is RunStatus.FINISHED, sweep.error
    assert sweep.children[0].run_id == first.run_id and sweep.children[1].run_id is not None
    assert [r.n_ok for r in sweep.summary.results] == [1, 1]


def test_a_config_without_a_sweep_or_with_an_executor_not_installed_is_refused(
        sweeps: SweepManager, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="has no 'sweep'"):
        sweeps.start(parse_config(scripted_config_dict("classifier")))
    doc = scripted_config_dict("classifier")
    doc["sweep"] = {"strategies": ["p"], "seeds": [0]}
    doc["executor"] = {"kind": "ray"}
    monkeypatch.delitem(EXECUTORS, "ray")  # an install whose executors do not include it
    with pytest.raises(ConfigError, match=re.escape("executor 'ray' is not available in this install")):
        sweeps.start(parse_config(doc))
    assert sweeps.store.list_sweeps() == [] and sweeps.store.list_runs() == []  # nothing recorded


def test_a_run_the_executor_cannot_start_fails_alone(sweeps: SweepManager, monkeypatch: pytest.MonkeyPatch) -> None:
    class Flaky(LocalExecutor):  # an executor is pluggable: the Ray one registers in EXECUTORS the same way
        def submit(self, run_id: int, plan: Any, *, resume: bool) -> None:
            if plan.config.seed == 0:
                raise OSError("no worker slot")
            super().submit(run_id, plan, resume=resume)

    monkeypatch.setitem(EXECUTORS, "local", lambda spec, runs: Flaky(runs))
    sweep = _finished(sweeps, sweeps.start(_config(["p"], [0, 1], "sweep-flaky")))
    first, second = (sweeps.store.get_run(c.run_id) for c in sweep.children)
    assert first.status is RunStatus.FAILED and first.error == "the run could not be started: OSError: no worker slot"
    assert second.status is RunStatus.FINISHED
    assert sweep.status is RunStatus.FAILED and [s.status for s in sweep.summary.result("p").seeds] == ["failed", "ok"]
