"""View models of a sweep (strategies x seeds as one job) for the Run and Results pages and the sweep report.

The table in the paper's form (strategies x seeds, mean ± sd, the best of each column in bold), the
verdict sentences, the chart of test score per strategy with the seed points and the spread, time and
cost per strategy, what prefix sharing saved, the child runs, and the per-example win/loss matrix of two
strategies on the same test examples (the marks of the evidence matrix, ``core.views.evidence``). The
numbers are the summary's (``core.evidence.sweep``); no streamlit here: the pages render.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import plotly.graph_objects as go

from core.evidence.sweep import seed_evaluation, summarize_sweep
from core.plan.estimate import format_duration
from core.store import Store
from core.store.evidence import Cell, paired_rows
from core.store.sweep_records import ChildResult, SeedResult, Sweep, SweepSummary
from core.views.charts import BEST_COLOR, FAILED_COLOR, HEIGHT, LINE_COLOR
from core.views.evidence import cell_mark, preview

OUTCOME_LABELS = {"win": "A wins", "loss": "B wins", "tie": "tie"}
"""How one paired example reads: A's score above B's, below it, or the same."""


def current_summary(store: Store, sweep: Sweep) -> SweepSummary:
    """The summary stored when the sweep ended; computed from the store while it runs (or when none was stored)."""
    if sweep.status.is_terminal and sweep.summary is not None:
        return sweep.summary
    return summarize_sweep(store, sweep.id)


def score_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _seed_text(result: SeedResult) -> str:
    return score_text(result.test_score) if result.status == "ok" else result.status


# --- the table in the paper's form ---------------------------------------------------------------


@dataclass(frozen=True)
class TableCell:
    text: str
    bold: bool = False


@dataclass(frozen=True)
class SweepTable:
    """Rows: the strategies; columns: each seed's test score, then the mean ± sd over the seeds."""

    headers: tuple[str, ...]
    rows: tuple[tuple[TableCell, ...], ...]


def _best(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def paper_table(summary: SweepSummary) -> SweepTable:
    """The strategies x seeds table of test scores, mean ± sd last; the best of each column in bold
    (every strategy that ties it); a seed without a result reads "failed" or "pending"."""
    results = summary.results
    seed_best = [_best([r.seeds[i].test_score if r.seeds[i].status == "ok" else None for r in results])
                 for i in range(len(summary.seeds))]
    mean_best = _best([r.mean for r in results])
    rows = []
    for r in results:
        cells = [TableCell(r.strategy)]
        for i, seed in enumerate(r.seeds):
            ok = seed.status == "ok" and seed.test_score is not None
            cells.append(TableCell(_seed_text(seed), ok and seed.test_score == seed_best[i]))
        mean = "-" if r.mean is None else score_text(r.mean) + ("" if r.sd is None else f" ± {r.sd:.1f}")
        if r.mean is not None and r.n_ok < len(r.seeds):
            mean += f" ({r.n_ok} of {len(r.seeds)} seeds)"
        cells.append(TableCell(mean, r.mean is not None and r.mean == mean_best))
        rows.append(tuple(cells))
    return SweepTable(("strategy", *(f"seed {s}" for s in summary.seeds), "mean ± sd"), tuple(rows))


def table_markdown(table: SweepTable) -> str:
    """The table as Markdown, the strategies as code and the best of each column in bold."""
    def cell(c: TableCell, first: bool) -> str:
        text = f"`{c.text}`" if first else c.text
        return f"**{text}**" if c.bold else text

    lines = ["| " + " | ".join(table.headers) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(table.headers) - 1)) + "|"]
    lines += ["| " + " | ".join(cell(c, i == 0) for i, c in enumerate(row)) + " |" for row in table.rows]
    return "\n".join(lines)


# --- the verdict ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One line of the verdict: ``best`` the strategy with the highest mean, ``beats`` a difference beyond
    noise, ``noise`` none, ``none`` no result yet."""

    kind: Literal["best", "beats", "noise", "none"]
    text: str


def verdicts(summary: SweepSummary) -> list[Verdict]:
    """Which strategy won, by how much and with what confidence: the best mean, then the best against each
    other strategy on the same test examples (the summary's paired comparisons)."""
    if summary.best is None:
        return [Verdict("none", "No strategy has a test score yet" + (
            "." if summary.status in ("finished", "failed", "cancelled", "interrupted") else ": the sweep is running."))]
    best = summary.result(summary.best)
    spread = "" if best.sd is None else f" ± {best.sd:.1f}"
    tied = [r.strategy for r in summary.results if r.strategy != best.strategy and r.mean == best.mean]
    out = [Verdict("best", f"Highest mean test score: '{summary.best}', {score_text(best.mean)}{spread} over "
                           f"{best.n_ok} seed{'s' if best.n_ok != 1 else ''}"
                           + (f" (tied with {', '.join(repr(s) for s in tied)})" if tied else "") + ".")]
    out += [Verdict("beats" if c.significant else "noise", c.sentence + ".") for c in summary.comparisons]
    return out


# --- time, cost, sharing, children ---------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def cost_rows(summary: SweepSummary) -> list[dict[str, Any]]:
    """Per strategy, what one run of it alone takes (the mean over its seeds with a result): wall time,
    LM cost (unknown without prices) and LM calls."""
    return [{"strategy": r.strategy, "seeds with a result": f"{r.n_ok} of {len(r.seeds)}",
             "time per seed": _duration(r.wall_s),
             "cost per seed": "unknown" if r.cost is None else ("free (local)" if r.cost == 0 else f"${r.cost:.4f}"),
             "LM calls per seed": "-" if r.calls is None else f"{r.calls:,.0f}"} for r in summary.results]


def sharing_line(summary: SweepSummary) -> str:
    """What prefix sharing saved: runs, and time when both are known."""
    line = (f"{summary.child_runs} run{'s' if summary.child_runs != 1 else ''} instead of {summary.standalone_runs} "
            "separate runs (each strategy is read from the longest run of its seed that holds it; a seed's "
            "baseline is evaluated once)")
    if summary.wall_s is not None and summary.standalone_wall_s is not None:
        line += (f": {_duration(summary.wall_s)} of runs, against about {_duration(summary.standalone_wall_s)} "
                 "for separate runs")
    return line + "."


def _elapsed(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (to now while the run goes on); None before it started."""
    if not start:
        return None
    finish = datetime.fromisoformat(end) if end else datetime.now(datetime.fromisoformat(start).tzinfo)
    return max(0.0, (finish - datetime.fromisoformat(start)).total_seconds())


def live_children(store: Store, sweep: Sweep) -> list[ChildResult]:
    """The child runs as they are now (cheap: no statistics), for the live view."""
    out = []
    for child in sweep.children:
        run = None if child.run_id is None else store.get_run(child.run_id)
        out.append(ChildResult(child.seed, child.strategy, child.covers, child.run_id,
                               "pending" if run is None else run.status.value, None if run is None else run.error,
                               None if run is None else _elapsed(run.started_at, run.finished_at)))
    return out


def children_rows(children: Sequence[ChildResult]) -> list[dict[str, Any]]:
    return [{"run": "-" if c.run_id is None else f"#{c.run_id}", "seed": c.seed, "strategy": c.strategy,
             "reads": ", ".join(c.covers), "status": c.status, "time": _duration(c.wall_s)} for c in children]


@dataclass(frozen=True)
class SweepProgress:
    ended: int
    total: int
    running: tuple[ChildResult, ...]

    @property
    def fraction(self) -> float:
        return self.ended / max(self.total, 1)

    @property
    def text(self) -> str:
        now = "; ".join(f"run #{c.run_id} '{c.strategy}' with seed {c.seed} is {c.status}" for c in self.running)
        return f"{self.ended} of {self.total} runs ended" + (f" · {now}" if now else "")


def sweep_progress(children: Sequence[ChildResult]) -> SweepProgress:
    ended = [c for c in children if c.status in ("finished", "failed", "cancelled", "interrupted")]
    running = tuple(c for c in children if c.run_id is not None and c not in ended)
    return SweepProgress(len(ended), len(children), running)


# --- the chart -----------------------------------------------------------------------------------


def sweep_figure(summary: SweepSummary, title: str = "Test score per strategy") -> go.Figure:
    """Each strategy's mean test score (bar, the best in the best color) with ± sd, and each seed's score as
    a point; a seed without a result is a red cross on the axis (never a score of 0)."""
    fig = go.Figure()
    results = summary.results
    fig.add_trace(go.Bar(
        x=[r.strategy for r in results], y=[r.mean for r in results], name="mean ± sd",
        marker={"color": [BEST_COLOR if r.strategy == summary.best else "#c6dbef" for r in results]},
        error_y={"type": "data", "array": [r.sd or 0.0 for r in results], "visible": True},
        hovertemplate="%{x}: mean %{y:.1f}<extra></extra>"))
    ok = [(r.strategy, s) for r in results for s in r.seeds if s.status == "ok" and s.test_score is not None]
    fig.add_trace(go.Scatter(
        x=[strategy for strategy, _ in ok], y=[s.test_score for _, s in ok], mode="markers", name="seeds",
        text=[f"seed {s.seed}" for _, s in ok], marker={"size": 10, "color": LINE_COLOR, "line": {"width": 1}},
        hovertemplate="%{x}, %{text}: %{y:.1f}<extra></extra>"))
    failed = [(r.strategy, s) for r in results for s in r.seeds if s.status == "failed"]
    if failed:
        fig.add_trace(go.Scatter(
            x=[strategy for strategy, _ in failed], y=[0] * len(failed), mode="markers", name="failed seed",
            text=[f"seed {s.seed}: {s.error or 'failed'}" for _, s in failed],
            marker={"symbol": "x", "size": 12, "color": FAILED_COLOR}, hovertemplate="%{x}, %{text}<extra></extra>"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(summary.strategies), title="strategy")
    fig.update_yaxes(range=[-5, 105], title="test score (%)")
    fig.update_layout(title=title, height=HEIGHT, margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.2})
    return fig


# --- the win/loss matrix of two strategies -------------------------------------------------------


@dataclass(frozen=True)
class PairedExample:
    """One test example with one seed, answered by strategy A's and B's kept programs: ``diff`` in points
    (A - B; an example that failed counts 0, as in the paired comparison)."""

    seed: int
    example_index: int
    inputs: str
    gold: str
    a: Cell
    b: Cell
    a_evaluation: int
    b_evaluation: int
    diff: float

    @property
    def outcome(self) -> Literal["win", "loss", "tie"]:
        return "win" if self.diff > 0 else "loss" if self.diff < 0 else "tie"


def _seed_result(summary: SweepSummary, strategy: str, seed: int) -> SeedResult:
    return next(s for s in summary.result(strategy).seeds if s.seed == seed)


def paired_examples(store: Store, summary: SweepSummary, a: str, b: str) -> list[PairedExample]:
    """Every test example that both strategies' kept programs answered, seed by seed (the pairs of
    ``compare_strategies``: its wins, losses and ties are these outcomes)."""
    out = []
    for seed in summary.seeds:
        ea, eb = (seed_evaluation(store, _seed_result(summary, s, seed)) for s in (a, b))
        if ea is None or eb is None:
            continue
        for row in paired_rows(store, ea, eb):
            ca, cb = row.cells
            if ca is None or cb is None:
                continue
            diff = ((ca.score or 0.0) - (cb.score or 0.0)) * 100
            out.append(PairedExample(seed, row.example_index, row.inputs, row.gold, ca, cb, ea, eb, diff))
    return out


def default_b(summary: SweepSummary, a: str) -> str:
    """The strategy to set against ``a`` first: against the best, the one it answers most differently (the
    most wins and losses: a runner-up that keeps the same program has nothing to show); else the best mean."""
    others = [s for s in summary.strategies if s != a]
    if a == summary.best and summary.comparisons:
        return max(summary.comparisons, key=lambda c: c.wins + c.losses).b
    scored = [r for r in summary.results if r.strategy != a and r.mean is not None]
    return max(scored, key=lambda r: r.mean or 0.0).strategy if scored else others[0]


def pair_counts(examples: Sequence[PairedExample]) -> dict[str, int]:
    return {outcome: sum(e.outcome == outcome for e in examples) for outcome in OUTCOME_LABELS}


def pair_columns(a: str, b: str) -> tuple[str, str]:
    """The matrix's column names of A and B (distinct even for one strategy on both sides)."""
    return f"A: {a}", f"B: {b}"


def pair_records(examples: Sequence[PairedExample], a: str, b: str, *, changed_only: bool = False,
                 preview_chars: int = 90) -> list[dict[str, Any]]:
    """One table record per paired example (only wins and losses with ``changed_only``): seed, example,
    A's and B's marks (✓ ✗ ⚠), who won, and the inputs and gold previews."""
    col_a, col_b = pair_columns(a, b)
    return [{"seed": e.seed, "example": e.example_index, col_a: cell_mark(e.a), col_b: cell_mark(e.b),
             "outcome": OUTCOME_LABELS[e.outcome], "inputs": preview(e.inputs, preview_chars),
             "gold": preview(e.gold, 40)}
            for e in examples if not changed_only or e.outcome != "tie"]
