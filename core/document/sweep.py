"""The Strategy page's sweep: which strategies to compare, with which seeds, and what the whole sweep costs.

A draft's ``sweep`` (``core.config.sweep.SweepSpec``) is None for a plain run; turning it on offers the
draft's strategy and its prefixes (``p``, ``p -> w``, ``p -> w -> p``: the three strategies one run per
seed holds), three seeds. The estimate covers every child run of the sweep (``core.plan.sweep``: per seed
only the strategies no other one extends run, and a seed's baseline is evaluated once) and sets it
against separate runs of each strategy with each seed, so the page can say what prefix sharing saves.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config.schema import RunConfig, RunDraft
from core.config.strategy import PRESETS, normalize_strategy, split_strategy, strategy_prefixes
from core.data import Table
from core.document.base import revise
from core.errors import StrategyError
from core.plan.estimate import Estimate, estimate
from core.plan.sweep import child_config, plan_sweep

DEFAULT_SEEDS = (0, 1, 2)
"""The seeds a new sweep runs each strategy with (the paper's three)."""


def sweep_choices(doc: RunDraft) -> list[str]:
    """The strategies the page offers: the presets whose steps the draft defines, the draft's strategy
    and its prefixes, and the sweep's own (a composed one included), each once, in that order."""
    keys = set(doc.optimizers)
    offered = [s for s in PRESETS if set(split_strategy(s)) <= keys]
    try:
        offered += strategy_prefixes(doc.strategy)[1:]
    except StrategyError:  # a strategy being typed: only the presets
        pass
    offered += list(doc.sweep.strategies if doc.sweep else [])
    return list(dict.fromkeys(offered))


def set_sweep(doc: RunDraft, strategies: list[str], seeds: list[int]) -> RunDraft:
    """Compare ``strategies`` (each normalised against the draft's step keys: ``StrategyError`` naming the
    allowed keys otherwise), each run with every seed of ``seeds`` (``ConfigError`` naming the rule when
    the sweep is refused: no strategy, too many, a seed listed twice...)."""
    normalised = [normalize_strategy(text, doc.optimizers.keys()) for text in strategies]
    return revise(doc, sweep={"strategies": normalised, "seeds": list(seeds)})


def turn_sweep_on(doc: RunDraft, on: bool) -> RunDraft:
    """``on``: a sweep of the draft's strategy and its prefixes with the default seeds (the draft's sweep
    kept when it has one); off: a plain run again (``sweep`` None)."""
    if not on:
        return revise(doc, sweep=None) if doc.sweep is not None else doc
    if doc.sweep is not None:
        return doc
    return set_sweep(doc, strategy_prefixes(doc.strategy)[1:], list(DEFAULT_SEEDS))


def first_seeds(count: int) -> list[int]:
    """Seeds 0 .. count - 1 (what the page's number of seeds means)."""
    return list(range(count))


@dataclass(frozen=True)
class ChildEstimate:
    """One child run of the sweep: ``strategy`` with ``seed``, read for the strategies ``covers``;
    ``reuses_baseline``: its seed's baseline was evaluated by an earlier child."""

    seed: int
    strategy: str
    covers: tuple[str, ...]
    reuses_baseline: bool
    calls: int
    seconds: float
    cost: float | None


@dataclass(frozen=True)
class SweepEstimate:
    """The sweep's child runs against ``standalone_runs`` separate runs (one per strategy and seed)."""

    children: tuple[ChildEstimate, ...]
    standalone_runs: int
    standalone_calls: int
    standalone_seconds: float
    standalone_cost: float | None
    notes: tuple[str, ...] = ()

    @property
    def child_runs(self) -> int:
        return len(self.children)

    @property
    def calls(self) -> int:
        return sum(c.calls for c in self.children)

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.children)

    @property
    def cost(self) -> float | None:
        costs = [c.cost for c in self.children]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    @property
    def saved_seconds(self) -> float:
        return max(0.0, self.standalone_seconds - self.seconds)


def _test_share(result: Estimate) -> tuple[float, float]:
    """Calls and seconds of ONE test evaluation (a run's estimate counts two: its baseline and its best)."""
    rounds = sum(s.seconds for s in result.steps)
    return result.test_calls / 2, max(0.0, result.seconds - rounds) / 2


def _child(result: Estimate, seed: int, strategy: str, covers: tuple[str, ...], reuses_baseline: bool) -> ChildEstimate:
    """What the child run does: its steps (its baseline only when it evaluates its own), and on test the
    round each covered strategy keeps and the baseline (at most: rounds kept twice are evaluated once)."""
    steps = result.steps[1:] if reuses_baseline else result.steps
    test_calls, test_seconds = _test_share(result)
    evaluations = len(covers) + (0 if reuses_baseline else 1)
    calls = round(sum(s.calls for s in steps) + evaluations * test_calls)
    seconds = sum(s.seconds for s in steps) + evaluations * test_seconds
    cost = None if result.cost is None else result.cost * calls / max(result.calls, 1)  # in proportion to calls
    return ChildEstimate(seed, strategy, covers, reuses_baseline, calls, seconds, cost)


def estimate_sweep(config: RunConfig, table: Table | None = None) -> SweepEstimate:
    """Estimate every child run of ``config``'s sweep and the separate runs it stands for.

    Each child's configuration (``child_config``) is estimated as a run (``core.plan.estimate``) once per
    strategy: the run's seed changes no estimate (the same split, budgets and step settings), so the
    other seeds reuse it. ``ConfigError`` when ``config`` has no sweep.
    """
    plan = plan_sweep(config)
    alone: dict[str, Estimate] = {}

    def of(seed: int, strategy: str) -> Estimate:
        if strategy not in alone:
            alone[strategy] = estimate(child_config(config, seed, strategy), table=table)
        return alone[strategy]

    children = tuple(_child(of(c.seed, c.strategy), c.seed, c.strategy, c.covers, c.baseline_from is not None)
                     for c in plan.children)
    separate = [of(seed, s) for seed in plan.seeds for s in plan.strategies]
    costs = [e.cost for e in separate]
    notes = next(iter(alone.values())).notes if alone else []
    return SweepEstimate(children, plan.standalone_runs, sum(e.calls for e in separate),
                         sum(e.seconds for e in separate),
                         None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
                         tuple(notes))
