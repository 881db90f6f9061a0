"""The Sweep view's models: the paper's table (best of each column in bold), the verdict, the chart, time and
cost, and the win/loss matrix of two strategies (the same pairs as the paired comparison)."""

from __future__ import annotations

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.evidence.sweep import compare_strategies
from core.run import RunManager
from core.run.sweep import SweepManager
from core.store import Store
from core.store.sweep_records import ChildResult, Comparison, SeedResult, StrategyResult, SweepSummary
from core.views.sweep import (
    children_rows,
    cost_rows,
    current_summary,
    default_b,
    live_children,
    pair_columns,
    pair_counts,
    pair_records,
    paired_examples,
    paper_table,
    sharing_line,
    sweep_figure,
    sweep_progress,
    table_markdown,
    verdicts,
)


def _seed(seed: int, score: float | None, status: str = "ok", **extra) -> SeedResult:
    return SeedResult(seed, status, run_id=1, round_index=1, test_score=score, **extra)


def _summary(status: str = "finished") -> SweepSummary:
    """Three strategies x three seeds: 'p -> w' best on seeds 0 and 2, 'p' and 'p -> w' tied on seed 1, 'w' failed
    on seed 2; p -> w beats p beyond noise, not w."""
    results = (
        StrategyResult("p", 60.0, 5.0, (_seed(0, 55.0), _seed(1, 65.0), _seed(2, 60.0)), wall_s=30.0, cost=None,
                       calls=120.0),
        StrategyResult("w", 50.0, 10.0, (_seed(0, 40.0), _seed(1, 60.0), _seed(2, None, "failed", error="run 9 failed")),
                       wall_s=90.0, cost=0.0, calls=60.0),
        StrategyResult("p -> w", 70.0, 4.6, (_seed(0, 75.0), _seed(1, 65.0), _seed(2, 70.0)), wall_s=150.0,
                       cost=0.0123, calls=200.0),
    )
    comparisons = (
        Comparison("p -> w", "p", 60, 12, 2, 46, 10.0, 4.0, 16.0, 0.01, True, "p -> w beats p by 10.0 ± 6.0 points"),
        Comparison("p -> w", "w", 40, 8, 6, 26, 3.0, -2.0, 8.0, 0.8, False,
                   "no difference beyond noise between p -> w and w (+3.0 points)"),
    )
    children = (ChildResult(0, "p -> w", ("p", "p -> w"), 1, "finished", None, 160.0),
                ChildResult(0, "w", ("w",), 2, "finished", None, 80.0))
    return SweepSummary(sweep_id=1, status=status, strategies=("p", "w", "p -> w"), seeds=(0, 1, 2), results=results,
                        best="p -> w", comparisons=comparisons, children=children, child_runs=6, standalone_runs=9,
                        wall_s=480.0, standalone_wall_s=810.0)


def test_the_paper_table_bolds_the_best_of_each_column_and_every_tie():
    table = paper_table(_summary())
    assert table.headers == ("strategy", "seed 0", "seed 1", "seed 2", "mean ± sd")
    texts = [[c.text for c in row] for row in table.rows]
    assert texts == [["p", "55.0", "65.0", "60.0", "60.0 ± 5.0"],
                     ["w", "40.0", "60.0", "failed", "50.0 ± 10.0 (2 of 3 seeds)"],
                     ["p -> w", "75.0", "65.0", "70.0", "70.0 ± 4.6"]]
    bold = [[c.bold for c in row[1:]] for row in table.rows]
    assert bold == [[False, True, False, False], [False, False, False, False], [True, True, True, True]]
    markdown = table_markdown(table)
    assert "| `p -> w` | **75.0** | **65.0** | **70.0** | **70.0 ± 4.6** |" in markdown
    assert "| `p` | 55.0 | **65.0** | 60.0 | 60.0 ± 5.0 |" in markdown
    assert markdown.splitlines()[1] == "| --- | ---: | ---: | ---: | ---: |"


def test_a_pending_seed_and_a_strategy_without_results_are_not_bold():
    summary = _summary("running")
    pending = StrategyResult("w", None, None, (_seed(0, None, "pending"), _seed(1, None, "pending"),
                                               _seed(2, None, "pending")))
    summary = SweepSummary(**{**summary.__dict__, "results": (summary.results[0], pending, summary.results[2])})
    row = paper_table(summary).rows[1]
    assert [(c.text, c.bold) for c in row] == [("w", False), ("pending", False), ("pending", False),
                                               ("pending", False), ("-", False)]


def test_the_verdict_names_the_winner_then_each_comparison():
    lines = verdicts(_summary())
    assert [v.kind for v in lines] == ["best", "beats", "noise"]
    assert lines[0].text == "Highest mean test score: 'p -> w', 70.0 ± 4.6 over 3 seeds."
    assert lines[1].text == "p -> w beats p by 10.0 ± 6.0 points."
    assert lines[2].text.startswith("no difference beyond noise between p -> w and w")
    empty = SweepSummary(**{**_summary("running").__dict__, "best": None, "comparisons": ()})
    assert [(v.kind, v.text) for v in verdicts(empty)] == [
        ("none", "No strategy has a test score yet: the sweep is running.")]


def test_the_chart_has_the_means_with_their_spread_each_seed_and_failures_on_the_axis():
    fig = sweep_figure(_summary())
    bars = next(t for t in fig.data if t.name == "mean ± sd")
    assert list(bars.x) == ["p", "w", "p -> w"] and list(bars.y) == [60.0, 50.0, 70.0]
    assert list(bars.error_y.array) == [5.0, 10.0, 4.6]
    assert bars.marker.color[2] != bars.marker.color[0]  # the best stands out
    seeds = next(t for t in fig.data if t.name == "seeds")
    assert list(zip(seeds.x, seeds.y, seeds.text, strict=True))[:3] == [("p", 55.0, "seed 0"), ("p", 65.0, "seed 1"),
                                                                       ("p", 60.0, "seed 2")]
    assert len(seeds.y) == 8  # the failed seed is not a point of the scores
    failed = next(t for t in fig.data if t.name == "failed seed")
    assert list(failed.x) == ["w"] and failed.marker.symbol == "x" and failed.text == ("seed 2: run 9 failed",)
    assert list(fig.layout.xaxis.categoryarray) == ["p", "w", "p -> w"]


def test_time_cost_sharing_and_children():
    summary = _summary()
    rows = cost_rows(summary)
    assert [r["strategy"] for r in rows] == ["p", "w", "p -> w"]
    assert [r["cost per seed"] for r in rows] == ["unknown", "free (local)", "$0.0123"]
    assert [r["seeds with a result"] for r in rows] == ["3 of 3", "2 of 3", "3 of 3"]
    assert rows[2]["time per seed"] == "2 min" and rows[0]["LM calls per seed"] == "120"
    assert sharing_line(summary).startswith("6 runs instead of 9 separate runs")
    assert sharing_line(summary).endswith(": 8 min of runs, against about 14 min for separate runs.")
    assert children_rows(summary.children)[0] == {"run": "#1", "seed": 0, "strategy": "p -> w", "reads": "p, p -> w",
                                                  "status": "finished", "time": "3 min"}
    progress = sweep_progress([*summary.children, ChildResult(1, "p -> w", ("p", "p -> w"), 3, "running"),
                               ChildResult(1, "w", ("w",), None, "pending")])
    assert (progress.ended, progress.total, progress.fraction) == (2, 4, 0.5)
    assert progress.text == "2 of 4 runs ended · run #3 'p -> w' with seed 1 is running"


def test_the_matrix_first_sets_the_best_against_the_strategy_it_answers_most_differently():
    summary = _summary()
    assert default_b(summary, "p -> w") == "p"  # 12 + 2 examples changed against p, 8 + 6 against w: the first
    w_differs_more = Comparison(**{**summary.comparisons[1].__dict__, "wins": 20})
    changed = SweepSummary(**{**summary.__dict__, "comparisons": (summary.comparisons[0], w_differs_more)})
    assert default_b(changed, "p -> w") == "w"
    assert default_b(summary, "p") == "p -> w" and default_b(summary, "w") == "p -> w"  # else: the best mean


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, int]:
    """A finished scripted sweep: p, w and p -> w with seeds 0 and 1 (p read from the p -> w runs)."""
    store = Store(tmp_path_factory.mktemp("sweep-views") / "runs.db")
    sweeps = SweepManager(RunManager(store))
    doc = scripted_config_dict("classifier", tag="sweep-views")
    doc["sweep"] = {"strategies": ["p", "w", "p -> w"], "seeds": [0, 1]}
    sweep_id = sweeps.start(parse_config(doc))
    assert sweeps.wait(sweep_id, timeout=240)
    return store, sweep_id


def test_the_win_loss_matrix_holds_the_pairs_of_the_paired_comparison(finished: tuple[Store, int]):
    store, sweep_id = finished
    sweep = store.get_sweep(sweep_id)
    assert sweep.status.value == "finished", sweep.error
    summary = current_summary(store, sweep)
    assert summary == sweep.summary
    for a, b in (("p", "w"), ("w", "p -> w"), ("p -> w", "p")):  # across runs, and within one run (p of p -> w)
        examples = paired_examples(store, summary, a, b)
        comparison = compare_strategies(store, sweep_id, a, b)
        counts = pair_counts(examples)
        assert (len(examples), counts["win"], counts["loss"], counts["tie"]) == (
            comparison.pairs, comparison.wins, comparison.losses, comparison.ties)
        assert {e.seed for e in examples} == {0, 1}
        assert comparison.mean_diff == pytest.approx(sum(e.diff for e in examples) / len(examples))
        records = pair_records(examples, a, b, changed_only=True)
        assert len(records) == counts["win"] + counts["loss"]
        col_a, col_b = pair_columns(a, b)
        for record, example in zip(records, [e for e in examples if e.outcome != "tie"], strict=True):
            assert record["outcome"] == ("A wins" if example.diff > 0 else "B wins")
            assert {record[col_a][0], record[col_b][0]} <= {"✓", "✗", "⚠"}
            assert (record["seed"], record["example"]) == (example.seed, example.example_index)
    changed = [e for e in paired_examples(store, summary, "p", "w") if e.outcome != "tie"]
    assert changed, "the scripted LMs answer p and w differently on some test examples"


def test_the_live_children_follow_the_store(finished: tuple[Store, int]):
    store, sweep_id = finished
    children = live_children(store, store.get_sweep(sweep_id))
    assert [(c.seed, c.strategy, c.status) for c in children] == [(0, "p -> w", "finished"), (0, "w", "finished"),
                                                                  (1, "p -> w", "finished"), (1, "w", "finished")]
    assert all(c.wall_s is not None and c.wall_s > 0 for c in children)
    assert sweep_progress(children).text == "4 of 4 runs ended"
