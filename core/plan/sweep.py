"""Which runs a sweep needs: the sweep's strategies x seeds, with the work they share done once.

A run of ``p -> w -> p`` records a round after each of its steps: its rounds 1 and 2 are what runs
of ``p`` and ``p -> w`` with the same seed would record (BetterTogether runs the same steps in the
same order with the same seeded shuffles; ``core.run.bettertogether``). So, per seed, only the
*maximal* strategies run (those that no other strategy of the sweep extends), and every strategy is
read from the longest run that holds it. The runs of one seed all start from the same baseline: the
first one evaluates it, the others reuse its score (``ChildPlan.baseline_from``), so a seed's baseline
is evaluated once. Pure: no store, no LM.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config.schema import RunConfig
from core.config.strategy import split_strategy
from core.errors import ConfigError

ChildKey = tuple[int, str]
"""A child run of a sweep: (seed, strategy)."""


@dataclass(frozen=True)
class ChildPlan:
    """One run of a sweep: ``strategy`` with ``seed``; the sweep reads the strategies ``covers`` from it
    (prefixes of ``strategy``, itself last). ``baseline_from`` is the child of the same seed whose
    baseline it reuses (None: it evaluates its own)."""

    seed: int
    strategy: str
    covers: tuple[str, ...]
    baseline_from: ChildKey | None = None

    @property
    def key(self) -> ChildKey:
        return (self.seed, self.strategy)


@dataclass(frozen=True)
class SweepPlan:
    """The sweep's strategies and seeds (config order) and the runs that cover them, in run order: by
    seed, each seed's runs longest strategy first."""

    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    children: tuple[ChildPlan, ...]

    @property
    def standalone_runs(self) -> int:
        """Runs without sharing: one per strategy and seed."""
        return len(self.strategies) * len(self.seeds)

    @property
    def child_runs(self) -> int:
        return len(self.children)

    def holder(self, seed: int, strategy: str) -> ChildPlan:
        """The child run that holds ``strategy`` for ``seed``."""
        for child in self.children:
            if child.seed == seed and strategy in child.covers:
                return child
        raise ConfigError(f"the sweep has no run of strategy {strategy!r} with seed {seed}")


def is_prefix(short: str, long: str) -> bool:
    """True when strategy ``short``'s steps begin strategy ``long``'s (``p`` of ``p -> w``; a strategy of itself)."""
    a, b = split_strategy(short), split_strategy(long)
    return len(a) <= len(b) and b[: len(a)] == a


def maximal_strategies(strategies: list[str] | tuple[str, ...]) -> list[str]:
    """The strategies that no other one extends, longest first (ties in the given order)."""
    kept = [s for s in strategies if not any(o != s and is_prefix(s, o) for o in strategies)]
    return sorted(kept, key=lambda s: -len(split_strategy(s)))


def plan_sweep(config: RunConfig) -> SweepPlan:
    """The runs of ``config``'s sweep; ``ConfigError`` when it has none."""
    if config.sweep is None:
        raise ConfigError("the configuration has no 'sweep'; add one, e.g. "
                          '"sweep": {"strategies": ["p", "p -> w -> p"], "seeds": [0, 1, 2]}')
    strategies = tuple(config.sweep.strategies)
    runs = maximal_strategies(strategies)
    children = []
    for seed in config.sweep.seeds:
        first: ChildKey | None = None
        for strategy in runs:
            covers = tuple(sorted((s for s in strategies if is_prefix(s, strategy)),
                                  key=lambda s: len(split_strategy(s))))
            children.append(ChildPlan(seed, strategy, covers, baseline_from=first))
            first = first or (seed, strategy)
    return SweepPlan(strategies, tuple(config.sweep.seeds), tuple(children))


def child_config(config: RunConfig, seed: int, strategy: str) -> RunConfig:
    """The configuration of one child run: the sweep's, with the child's ``strategy`` and ``seed`` and no
    sweep (typed API keys kept, in memory)."""
    return config.model_copy(update={"strategy": strategy, "seed": seed, "sweep": None,
                                     "name": f"{config.name} · {strategy} · seed {seed}"})
