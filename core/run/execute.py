"""Executing one run in the current thread (of the run's worker process): compile, record, evaluate on test.

With ``resume=True`` the finished rounds of an earlier attempt are replayed (``core.run.resume``)
and only the remaining steps run; the new rounds are appended to the earlier ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import dspy

from core.config.strategy import split_strategy, strategy_prefixes
from core.errors import RunCancelled, StoreError
from core.evidence.capture import CallbackTee, UsageTap, evidence_scope
from core.lms.call_cache import run_cache
from core.paths import run_dir
from core.plan.prepare import PreparedRun
from core.run.bettertogether import Candidate, StudioBetterTogether, candidates_of
from core.run.build import build_optimizers, effective_threads, make_adapter
from core.run.observer import RunObserver
from core.run.recorder import RoundRecorder
from core.run.resume import load_replay
from core.store import Store
from core.store.records import RunOutcome, RunStatus
from core.store.sweep_records import TestPlan

logger = logging.getLogger(__name__)


def evaluate_score(program: dspy.Module, devset: list, metric: Callable, threads: int,
                   recorder: RoundRecorder, which: str = "best", *, round_index: int | None = None,
                   label: str | None = None) -> float | None:
    """Score on ``devset``; None (never a silent 0) when every example failed or the evaluation crashed.

    Each example's evidence is recorded as the test evaluation of the ``which`` program (of round
    ``round_index`` when given; labelled ``label``, by default "test: <which>")."""
    recorder.evaluation_started()
    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=threads, display_progress=False,
                             display_table=False, max_errors=len(devset) + 1, provide_traceback=False)
    with evidence_scope(recorder.evidence, "test", label or f"test: {which}", program, devset, program_label=which,
                        round_index=round_index) as scope:
        try:
            scope.result = evaluate(program)
            score = float(scope.result.score)
        except Exception as e:  # noqa: BLE001 - recorded, not turned into a score
            scope.error = f"test evaluation crashed: {type(e).__name__}: {e}"
            recorder.event("error", scope.error)
            return None
        if recorder.evaluation_errors() >= len(devset):
            scope.error = (f"test evaluation failed on all {len(devset)} examples; last LM error: "
                           f"{recorder.last_lm_error}")
            recorder.event("error", scope.error)
            return None
        scope.score = score
        return score


def execute_run(prepared: PreparedRun, store: Store, run_id: int, cancel: threading.Event, *,
                resume: bool = False) -> RunOutcome:
    """Run the optimization of ``prepared`` in this thread, recording it under ``run_id``.

    ``resume``: continue after the rounds already recorded for ``run_id`` (same config and seed).
    """
    config = prepared.config
    folder = run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    observer = RunObserver(cancel, prepared.runtimes)
    recorder = RoundRecorder(store, run_id, config, observer, folder, cancel)
    observer.on_call = recorder.progress
    evidence = recorder.evidence
    adapter = make_adapter(prepared.runtimes)
    threads = effective_threads(prepared)
    call_cache = run_cache()  # deterministic calls answered once per run (STUDIO_CALL_CACHE=0: off)
    with evidence, dspy.context(lm=prepared.context_lm, adapter=adapter,
                                callbacks=[CallbackTee(observer, evidence)], usage_tracker=UsageTap(observer, evidence),
                                num_threads=threads, studio_cancel_event=cancel, studio_call_cache=call_cache):
        optimizers = build_optimizers(prepared, recorder.weight_hooks(), adapter, events=step_events(recorder))
        optimizer = StudioBetterTogether(prepared.metric, recorder, **optimizers)
        if resume:
            _replay_finished_rounds(optimizer, recorder, prepared, store, run_id, folder)
        recorder.event("setup", "label fields constrained to their values: "
                                + (", ".join(f"{k} ({len(v)})" for k, v in prepared.label_choices.items()) or "none"),
                       {"label_choices": prepared.label_choices})
        recorder.event("status", f"running '{config.strategy}' on {len(prepared.split.train)} train / "
                                 f"{len(prepared.split.val)} validation examples")
        try:
            compiled = optimizer.compile(
                prepared.program,
                trainset=list(prepared.split.train),
                valset=list(prepared.split.val),
                num_threads=threads,
                max_errors=config.limits.max_errors or len(prepared.split.val) + len(prepared.split.train),
                seed=config.seed,
                strategy=config.strategy,
            )
        except RunCancelled:
            recorder.event("cancelled", "cancelled during the baseline evaluation")
            return RunOutcome(RunStatus.CANCELLED, error="cancelled by the user")
        candidates = candidates_of(compiled)
        baseline = next(c for c in candidates if c.strategy == "")
        best_round = recorder.best  # the round marked is_best; the baseline when every evaluation failed
        best_candidate = (baseline if best_round is None else
                          next(c for c in candidates if c.strategy == best_round.strategy))
        best = best_candidate.program
        best.save(str(folder / "best.json"))
        baseline.program.save(str(folder / "baseline.json"))
        store.add_artifact(run_id, "best_program", str(folder / "best.json"), {
            "strategy": best_candidate.strategy, "round": None if best_round is None else best_round.index})
        store.add_artifact(run_id, "baseline_program", str(folder / "baseline.json"), {})
        cancelled = cancel.is_set()
        flagged = bool(compiled.flag_compilation_error_occurred) and not cancelled
        test_base = test_best = None
        tests = store.test_plan(run_id)
        if not cancelled and best_candidate.score is not None and tests.strategies:
            try:
                test_base, test_best = _test_rounds(prepared, store, run_id, recorder, candidates, tests, threads)
            except RunCancelled:
                cancelled = True
        elif not cancelled and best_candidate.score is not None:
            recorder.testing_started(len(prepared.split.test))
            try:
                test = prepared.split.test
                test_base = evaluate_score(baseline.program, test, prepared.metric, threads, recorder, "baseline")
                test_best = (test_base if best_candidate.strategy == "" else
                             evaluate_score(best, test, prepared.metric, threads, recorder, "best"))
            except RunCancelled:
                cancelled = True
        stats = call_cache.stats()
        recorder.event("cache", "repeated deterministic LM calls answered from the run's cache: "
                                f"{stats['hits']}" if stats["enabled"] else
                                f"the run's call cache was off (STUDIO_CALL_CACHE): {stats['misses']} calls made", stats)
        if cancelled:
            status, error = RunStatus.CANCELLED, "cancelled by the user; the best program so far was kept"
        elif flagged or best_candidate.score is None:
            status = RunStatus.FAILED
            error = recorder.step_error or "every evaluation failed; see the event log"
            if best_candidate.score is not None:
                error += f"; kept the best program so far ('{best_candidate.strategy or 'baseline'}')"
        else:
            status, error = RunStatus.FINISHED, None
        return RunOutcome(
            status=status,
            best_strategy=best_candidate.strategy,
            best_score=best_candidate.score,
            baseline_score=baseline.score,
            test_baseline_score=test_base,
            test_best_score=test_best,
            flagged=flagged,
            error=error,
        )


def _test_rounds(prepared: PreparedRun, store: Store, run_id: int, recorder: RoundRecorder,
                 candidates: list[Candidate], tests: TestPlan, threads: int) -> tuple[float | None, float | None]:
    """A sweep's run (``tests.strategies`` set): record which round each of those strategies keeps (its best
    on validation among its rounds, as a run of it alone would) and evaluate on test, once each, those
    rounds, the baseline and the best round. Rounds a resumed run evaluated already, and a baseline that
    ``tests.baseline_from`` evaluated, are not evaluated again. Returns the baseline's and the best's test scores."""
    best = recorder.best
    assert best is not None  # the caller checked that a round has a score
    labels = strategy_prefixes(prepared.config.strategy)
    kept = {s: r.index for s in tests.strategies if (r := recorder.best_of(len(split_strategy(s)))) is not None}
    store.set_kept_rounds(run_id, kept)
    scores = {index: score for index, (_, score) in store.test_evaluations(run_id).items()}
    if tests.baseline_from is not None and scores.get(0) is None:
        scores[0] = store.test_evaluations(tests.baseline_from).get(0, (0, None))[1]
    todo = sorted(i for i in {best.index, 0, *kept.values()} if scores.get(i) is None)
    recorder.testing_started(len(prepared.split.test), "round(s) " + ", ".join(map(str, todo)) if todo else
                             "no round not evaluated yet")
    by_strategy = {c.strategy: c for c in candidates}
    for index in todo:
        which = "baseline" if index == 0 else "best" if index == best.index else f"round {index}"
        scores[index] = evaluate_score(by_strategy[labels[index]].program, prepared.split.test, prepared.metric,
                                       threads, recorder, which, round_index=index,
                                       label=f"test: {labels[index] or 'baseline'}")
    return scores.get(0), scores.get(best.index)


def step_events(recorder: RoundRecorder) -> Callable[[str, str, dict], None]:
    """The run's event log as an optimizer writes it: each event names the step in progress (its strategy)."""
    def record(kind: str, message: str, data: dict) -> None:
        step = recorder.current_step
        recorder.event(kind, f"{step}: {message}", {**data, "strategy": step})

    return record


def _replay_finished_rounds(optimizer: StudioBetterTogether, recorder: RoundRecorder, prepared: PreparedRun,
                            store: Store, run_id: int, folder) -> None:
    """Load the rounds an earlier attempt finished and make the optimizer replay them."""
    replay = load_replay(store, run_id, prepared, folder)
    expected = strategy_prefixes(prepared.config.strategy)
    recorded = [r.strategy for r in replay]
    if recorded != expected[: len(recorded)]:
        raise StoreError(f"run {run_id} cannot be resumed: its rounds {recorded} do not follow its strategy "
                         f"'{prepared.config.strategy}'")
    optimizer.set_replay(replay)
    recorder.replayed(replay)
