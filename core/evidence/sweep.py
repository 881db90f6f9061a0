"""What a sweep found, read from the store: each strategy's test score per seed, mean and spread, time
and cost, and paired comparisons on the same test examples (``core.evidence.stats``).

A strategy's result for a seed is what a run of that strategy alone would keep: the round its run
recorded as kept (``Store.kept_rounds``: the best on validation among the strategy's rounds, decided by
the run's recorder), scored on the TEST split (validation picks within a run; test compares across
strategies). A strategy read from a longer run (``p`` from ``p -> w -> p``) is the same rounds, as a
run of it alone would record them with the same seed. Its time, cost and LM calls are those of its
rounds (0..its steps). A seed whose run stopped before the strategy's last round, or whose test
evaluation failed, is "failed" for that strategy; one not run yet is "pending".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.config.strategy import split_strategy
from core.errors import StoreError, shown
from core.evidence.stats import RESAMPLES, mean_sd, paired_comparison
from core.store import Store
from core.store.records import Round, Run
from core.store.sweep_records import (
    ChildResult,
    Comparison,
    SeedResult,
    StrategyResult,
    Sweep,
    SweepChild,
    SweepSummary,
)


@dataclass(frozen=True)
class _Cell:
    """One strategy with one seed: its result and the test evaluation behind it (None: no result)."""

    result: SeedResult
    evaluation_id: int | None = None


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round(max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()), 3)


def _alone_seconds(run: Run, rounds: list[Round], own: list[Round]) -> float | None:
    """About how long a run of a strategy alone takes: its rounds (``own``) plus what its run spent outside
    its rounds (starting, loading models, the test evaluations), which a run alone spends as well."""
    if not own:
        return None
    total = _seconds(run.started_at, run.finished_at)
    in_rounds = sum(_seconds(r.started_at, r.finished_at) or 0.0 for r in rounds)
    outside = max(0.0, total - in_rounds) if total is not None else 0.0
    return round(sum(_seconds(r.started_at, r.finished_at) or 0.0 for r in own) + outside, 3)


def _holder(sweep: Sweep, seed: int, strategy: str) -> SweepChild | None:
    return next((c for c in sweep.children if c.seed == seed and strategy in c.covers), None)


def _test_evaluation(store: Store, run_id: int, index: int) -> tuple[int, float | None] | None:
    """(evaluation id, score) of round ``index``'s test evaluation; the baseline's may be a sibling's."""
    found = store.test_evaluations(run_id).get(index)
    if found is None and index == 0 and (lender := store.test_plan(run_id).baseline_from) is not None:
        found = store.test_evaluations(lender).get(0)
    return found


def seed_evaluation(store: Store, result: SeedResult) -> int | None:
    """The id of the test evaluation behind a seed's result (the baseline's may be a sibling run's); None
    when the seed has no result ("failed" or "pending")."""
    if result.status != "ok" or result.run_id is None or result.round_index is None:
        return None
    found = _test_evaluation(store, result.run_id, result.round_index)
    return None if found is None else found[0]


def _cell(store: Store, child: SweepChild | None, seed: int, strategy: str, cache: dict[int, tuple]) -> _Cell:
    if child is None or child.run_id is None:
        return _Cell(SeedResult(seed, "pending"))
    if child.run_id not in cache:
        cache[child.run_id] = (store.get_run(child.run_id), store.list_rounds(child.run_id),
                               store.kept_rounds(child.run_id))
    run, rounds, kept = cache[child.run_id]
    own: list[Round] = [r for r in rounds if r.index <= len(split_strategy(strategy))]
    usage = [u for r in own for u in r.lm_usage.values()]
    costs = [u["cost"] for u in usage if u.get("cost") is not None]
    spent = dict(run_id=run.id, wall_s=_alone_seconds(run, rounds, own), cost=sum(costs) if costs else None,
                 calls=sum(int(u.get("calls") or 0) for u in usage))
    index = kept.get(strategy)
    if index is None:
        if not run.status.is_terminal:
            return _Cell(SeedResult(seed, "pending", **spent))
        why = (f"run {run.id} {run.status.value} before the round of '{strategy}'"
               + (f": {run.error}" if run.error else ""))
        return _Cell(SeedResult(seed, "failed", error=why, **spent))
    round_ = next((r for r in rounds if r.index == index), None)
    test = _test_evaluation(store, run.id, index)
    common = dict(round_index=index, round_strategy=None if round_ is None else round_.strategy,
                  val_score=None if round_ is None else round_.score, **spent)
    if test is None or test[1] is None:
        if not run.status.is_terminal:
            return _Cell(SeedResult(seed, "pending", **common))
        return _Cell(SeedResult(seed, "failed", error=f"run {run.id}: the test evaluation of round {index} "
                                                        "failed or did not happen", **common))
    return _Cell(SeedResult(seed, "ok", test_score=test[1], **common), test[0])


def _cells(store: Store, sweep: Sweep, strategies: tuple[str, ...], seeds: tuple[int, ...]) -> dict[tuple[int, str], _Cell]:
    cache: dict[int, tuple] = {}
    return {(seed, s): _cell(store, _holder(sweep, seed, s), seed, s, cache) for s in strategies for seed in seeds}


def _spec(sweep: Sweep) -> tuple[tuple[str, ...], tuple[int, ...]]:
    config = sweep.require_config()
    if config.sweep is None:
        raise StoreError(f"sweep {sweep.id}: its configuration has no 'sweep'")
    return tuple(config.sweep.strategies), tuple(config.sweep.seeds)


def _mean(values: list[float], digits: int) -> float | None:
    return round(sum(values) / len(values), digits) if values else None


def _strategy_result(strategy: str, seeds: tuple[int, ...], cells: dict[tuple[int, str], _Cell]) -> StrategyResult:
    results = tuple(cells[(seed, strategy)].result for seed in seeds)
    ok = [r for r in results if r.status == "ok"]
    mean, sd = mean_sd([r.test_score for r in ok if r.test_score is not None])
    return StrategyResult(strategy, mean, sd, results, wall_s=_mean([r.wall_s for r in ok if r.wall_s is not None], 3),
                          cost=_mean([r.cost for r in ok if r.cost is not None], 6),
                          calls=_mean([float(r.calls) for r in ok if r.calls is not None], 1))


def _compare(store: Store, a: str, b: str, seeds: tuple[int, ...], cells: dict[tuple[int, str], _Cell], *,
             resamples: int, rng_seed: int) -> Comparison:
    pairs: dict[int, list[tuple[float, float]]] = {}
    for seed in seeds:
        ea, eb = cells[(seed, a)].evaluation_id, cells[(seed, b)].evaluation_id
        if ea is None or eb is None:
            continue
        sa, sb = store.example_scores(ea), store.example_scores(eb)
        pairs[seed] = [(sa[i] or 0.0, sb[i] or 0.0) for i in sorted(sa.keys() & sb.keys())]
    return paired_comparison(a, b, pairs, resamples=resamples, rng_seed=rng_seed)


def compare_strategies(store: Store, sweep_id: int, a: str, b: str, *, resamples: int = RESAMPLES,
                       rng_seed: int = 0) -> Comparison:
    """Strategy ``a`` against ``b`` of sweep ``sweep_id``, paired on the same test examples of each seed."""
    sweep = store.get_sweep(sweep_id)
    strategies, seeds = _spec(sweep)
    for name in (a, b):
        if name not in strategies:
            raise StoreError(f"strategy {shown(name)} is not in sweep {sweep_id}; its strategies: "
                             f"{shown(list(strategies), quotes=False, brackets=False)}")
    cells = _cells(store, sweep, (a, b), seeds)
    return _compare(store, a, b, seeds, cells, resamples=resamples, rng_seed=rng_seed)


def summarize_sweep(store: Store, sweep_id: int, *, status: str | None = None, resamples: int = RESAMPLES,
                    rng_seed: int = 0) -> SweepSummary:
    """The sweep's results so far (``status``: the sweep's, unless given); the best strategy (highest mean
    test score, the first listed on a tie) is compared with each other one."""
    sweep = store.get_sweep(sweep_id)
    strategies, seeds = _spec(sweep)
    cells = _cells(store, sweep, strategies, seeds)
    results = tuple(_strategy_result(s, seeds, cells) for s in strategies)
    scored = [r for r in results if r.mean is not None]
    best = max(scored, key=lambda r: r.mean or 0.0).strategy if scored else None
    comparisons = tuple(_compare(store, best, other, seeds, cells, resamples=resamples, rng_seed=rng_seed)
                        for other in strategies if best is not None and other != best)
    children = []
    for child in sweep.children:
        run = None if child.run_id is None else store.get_run(child.run_id)
        children.append(ChildResult(child.seed, child.strategy, child.covers, child.run_id,
                                    "pending" if run is None else run.status.value, None if run is None else run.error,
                                    None if run is None else _seconds(run.started_at, run.finished_at)))
    spent = [c.wall_s for c in children if c.wall_s is not None]
    alone = [s.wall_s for r in results for s in r.seeds if s.status == "ok" and s.wall_s is not None]
    return SweepSummary(sweep_id=sweep.id, status=status or sweep.status.value, strategies=strategies, seeds=seeds,
                        results=results, best=best, comparisons=comparisons, children=tuple(children),
                        child_runs=len(sweep.children), standalone_runs=len(strategies) * len(seeds),
                        wall_s=round(sum(spent), 3) if spent else None,
                        standalone_wall_s=round(sum(alone), 3) if alone else None)
