"""Records of sweeps (strategies x seeds as one job): the sweep, its child runs, and its summary.

Frozen dataclasses like ``core.store.records``; the summary is stored as JSON in the sweep's row
(``to_json``/``from_json``), computed by ``core.evidence.sweep``. Scores are on the 0-100 scale of
runs, None where there is none (never a silent 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core.config.schema import RunConfig
from core.store.records import RunStatus

SeedStatus = Literal["ok", "failed", "pending"]


@dataclass(frozen=True)
class TestPlan:
    """Which programs a run evaluates on the test split, each with its per-example results.

    Empty ``strategies`` (every plain run): the baseline and the best round. Otherwise (a sweep's child
    run) the ``strategies`` read from the run (prefixes of its strategy): the round each of them keeps
    (its best on validation among rounds 0..its steps), the baseline and the best, each round once.
    ``baseline_from`` names a run of the same sweep and seed whose test evaluation of the same baseline
    stands for this run's (so it is not evaluated twice).
    """

    __test__ = False  # not a pytest class

    strategies: tuple[str, ...] = ()
    baseline_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"strategies": list(self.strategies), "baseline_from": self.baseline_from}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> TestPlan:
        data = data or {}
        lender = data.get("baseline_from")
        return cls(tuple(str(s) for s in data.get("strategies") or ()), None if lender is None else int(lender))


@dataclass(frozen=True)
class SweepChild:
    """One run of a sweep: ``strategy`` with ``seed``, holding the sweep's strategies ``covers``.
    ``baseline_from`` is the position of the child of the same seed whose baseline it reuses;
    ``run_id`` is None until the run is created."""

    sweep_id: int
    position: int
    seed: int
    strategy: str
    covers: tuple[str, ...]
    baseline_from: int | None = None
    run_id: int | None = None


@dataclass(frozen=True)
class SeedResult:
    """One strategy with one seed: the round a standalone run of it would keep (``round_index`` of run
    ``run_id``, produced by ``round_strategy``), its validation and test scores, and what a run of it alone
    takes: ``wall_s`` its rounds plus its run's time outside rounds (start, models, test), ``cost`` (USD, None
    when no price is known) and ``calls`` of its rounds. ``status`` "failed": the run stopped before the
    strategy's last round (or its test evaluation failed); "pending": not run yet."""

    seed: int
    status: SeedStatus
    run_id: int | None = None
    round_index: int | None = None
    round_strategy: str | None = None
    val_score: float | None = None
    test_score: float | None = None
    wall_s: float | None = None
    cost: float | None = None
    calls: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class StrategyResult:
    """A strategy over the seeds: the mean and sample sd of its test scores (sd None for one seed), each
    seed's result, and the mean seconds, cost (None when a price is unknown) and LM calls per seed."""

    strategy: str
    mean: float | None
    sd: float | None
    seeds: tuple[SeedResult, ...]
    wall_s: float | None = None
    cost: float | None = None
    calls: float | None = None

    @property
    def n_ok(self) -> int:
        return sum(s.status == "ok" for s in self.seeds)


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` on the same test examples (pairs: example x seed where both have a result):
    per pair ``a`` wins, loses or ties; ``mean_diff`` (points, a - b) with its paired-bootstrap 95%
    interval; the two-sided sign test's p-value on wins vs losses; ``significant``: the interval excludes 0."""

    a: str
    b: str
    pairs: int
    wins: int
    losses: int
    ties: int
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    significant: bool
    sentence: str


@dataclass(frozen=True)
class ChildResult:
    """How one child run went."""

    seed: int
    strategy: str
    covers: tuple[str, ...]
    run_id: int | None
    status: str  # the run's status, or "pending"
    error: str | None = None
    wall_s: float | None = None


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep found: one ``StrategyResult`` per strategy (config order), the ``best`` (highest mean
    test score, the first listed on a tie) compared with each other strategy, each child run, and the
    sharing: ``child_runs`` ran instead of ``standalone_runs``; ``wall_s`` the child runs' time, summed;
    ``standalone_wall_s`` the sum of every strategy's and seed's ``SeedResult.wall_s``: about what separate
    runs would have taken (bench/sweep.py measures separate runs)."""

    sweep_id: int
    status: str
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    results: tuple[StrategyResult, ...]
    best: str | None
    comparisons: tuple[Comparison, ...]
    children: tuple[ChildResult, ...]
    child_runs: int
    standalone_runs: int
    wall_s: float | None = None
    standalone_wall_s: float | None = None

    def result(self, strategy: str) -> StrategyResult:
        return next(r for r in self.results if r.strategy == strategy)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for result, data in zip(self.results, out["results"], strict=True):
            data["n_ok"] = result.n_ok
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SweepSummary:
        results = tuple(
            StrategyResult(strategy=r["strategy"], mean=r.get("mean"), sd=r.get("sd"),
                           seeds=tuple(SeedResult(**s) for s in r.get("seeds") or ()),
                           wall_s=r.get("wall_s"), cost=r.get("cost"), calls=r.get("calls"))
            for r in data.get("results") or ())
        return cls(sweep_id=int(data["sweep_id"]), status=str(data["status"]),
                   strategies=tuple(data.get("strategies") or ()), seeds=tuple(data.get("seeds") or ()),
                   results=results, best=data.get("best"),
                   comparisons=tuple(Comparison(**c) for c in data.get("comparisons") or ()),
                   children=tuple(ChildResult(**{**c, "covers": tuple(c.get("covers") or ())})
                                  for c in data.get("children") or ()),
                   child_runs=int(data.get("child_runs") or 0), standalone_runs=int(data.get("standalone_runs") or 0),
                   wall_s=data.get("wall_s"), standalone_wall_s=data.get("standalone_wall_s"))


@dataclass(frozen=True)
class Sweep:
    """One sweep: its configuration (with its ``sweep`` and ``executor``), status (a ``RunStatus``: the
    same life as a run), and its summary once computed. ``config`` is None only when the stored document
    no longer validates (``config_problem`` says why)."""

    id: int
    name: str
    status: RunStatus
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    config: RunConfig | None = None
    error: str | None = None
    summary: SweepSummary | None = None
    cancel_requested: bool = False
    heartbeat_at: float | None = None
    owner_pid: int | None = None
    owner_host: str | None = None
    base_dir: str | None = None
    config_problem: str | None = None
    children: tuple[SweepChild, ...] = field(default_factory=tuple)

    def require_config(self) -> RunConfig:
        if self.config is None:
            from core.errors import StoreError

            raise StoreError(f"sweep {self.id}: its saved configuration cannot be read: {self.config_problem}")
        return self.config
