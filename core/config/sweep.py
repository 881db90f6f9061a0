"""A sweep (several strategies x several seeds, as one job) and where its runs execute.

``"sweep": {"strategies": ["p", "p -> w", "p -> w -> p"], "seeds": [0, 1, 2]}`` in a run configuration
asks for each strategy to be run with each seed (the run's ``seed``; the data split keeps its own
``data.split.seed``, so every run is scored on the same test examples). ``"executor": {"kind": "local"}``
runs them through this machine's queue; ``{"kind": "ray", "address": ...}`` names a Ray cluster.
How a sweep shares work between its strategies is ``core.plan.sweep``'s; docs/config.md has the rules.

The strategies are checked here for their form only (text, distinct once normalised); the checks
against the step keys are the configuration's (``RunConfig._cross_check``), as for ``strategy``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.config.strategy import strategy_prefixes
from core.errors import StrategyError, shown

MAX_SWEEP_STRATEGIES = 8
"""Most strategies a sweep may compare."""
MAX_SWEEP_SEEDS = 10
"""Most seeds a sweep may run each strategy with."""
MAX_SEED = 2**31 - 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SweepSpec(_Model):
    """Which strategies to compare, each run once per seed."""

    strategies: list[str] = Field(description="strategies to compare, e.g. ['p', 'p -> w', 'p -> w -> p']")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="the run seeds, e.g. [0, 1, 2]")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, value: list[str]) -> list[str]:
        if not 1 <= len(value) <= MAX_SWEEP_STRATEGIES:
            raise ValueError(f"a sweep compares 1 to {MAX_SWEEP_STRATEGIES} strategies, got {len(value)}")
        seen: dict[str, str] = {}
        for text in value:
            try:
                steps = strategy_prefixes(text)[-1]  # checked for its form, in DSPy's form
            except StrategyError as e:
                raise ValueError(str(e)) from e
            if steps in seen:
                raise ValueError(f"strategy {shown(text)} is listed twice (as {shown(seen[steps])}); "
                                 "list each strategy once")
            seen[steps] = text
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not 1 <= len(value) <= MAX_SWEEP_SEEDS:
            raise ValueError(f"a sweep runs 1 to {MAX_SWEEP_SEEDS} seeds, got {len(value)}")
        for seed in value:
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed {shown(seed)} is out of range; allowed: 0 to {MAX_SEED}")
        repeated = sorted({seed for seed in value if value.count(seed) > 1})
        if repeated:
            raise ValueError(f"seeds {shown(repeated)} are listed more than once; list each seed once")
        return value


class LocalExecutorSpec(_Model):
    """The runs go through this machine's queue (embedded CPU runs one at a time)."""

    kind: Literal["local"] = "local"


class RayExecutorSpec(_Model):
    """Each run executes as a task on a Ray cluster; ``address`` None: the ``RAY_ADDRESS`` environment
    variable (or a local Ray instance)."""

    kind: Literal["ray"]
    address: str | None = Field(None, min_length=1, max_length=2000, description="e.g. ray://head:10001 or auto")
    max_parallel: int = Field(4, ge=1, le=64, description="hosted-model runs in parallel at most")


ExecutorSpec = Annotated[LocalExecutorSpec | RayExecutorSpec, Field(discriminator="kind")]
