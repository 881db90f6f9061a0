"""Figure builders: what is plotted, and failures drawn as failures (never as a score of 0)."""

from __future__ import annotations

from core.store.records import Event, Round
from core.views.charts import comparison_figure, label_figure, loss_figure, score_figure, timeline_figure, usage_figure


def _rounds() -> list[Round]:
    return [
        Round(run_id=1, index=0, strategy="", score=40.0, started_at="2026-01-01T00:00:00+00:00",
              finished_at="2026-01-01T00:00:05+00:00",
              lm_usage={"m/large": {"calls": 20, "input_tokens": 100, "output_tokens": 10}}),
        Round(run_id=1, index=1, strategy="p", step_key="p", score=55.0, is_best=True,
              started_at="2026-01-01T00:00:05+00:00", finished_at="2026-01-01T00:00:30+00:00",
              lm_usage={"m/large": {"calls": 100, "input_tokens": 900, "output_tokens": 50},
                        "m/small": {"calls": 40, "input_tokens": 300, "output_tokens": 20}}),
        Round(run_id=1, index=2, strategy="p -> w", step_key="w", score=None, eval_failed=True,
              eval_error="all 20 validation examples failed", started_at="2026-01-01T00:00:30+00:00",
              finished_at="2026-01-01T00:01:00+00:00"),
    ]


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_score_figure_labels_points_marks_best_and_failures():
    fig = score_figure(_rounds(), planned=["", "p", "p -> w", "p -> w -> p"])
    scores = _trace(fig, "validation score")
    assert list(scores.x) == ["baseline", "p"] and list(scores.y) == [40.0, 55.0]
    assert list(scores.text) == ["baseline", "p"]
    best = _trace(fig, "best")
    assert list(best.x) == ["p"] and best.marker.symbol == "star"
    failed = _trace(fig, "evaluation failed")
    assert list(failed.x) == ["p -> w"] and failed.marker.symbol == "x"
    assert "evaluation failed: all 20 validation examples failed" in failed.customdata[0]
    assert None not in scores.y and 0 not in scores.y  # the failure is not plotted as a score
    assert list(fig.layout.xaxis.categoryarray) == ["baseline", "p", "p -> w", "p -> w -> p"]
    assert any("baseline 40.0" in (a.text or "") for a in fig.layout.annotations)


def test_score_figure_empty_run_has_no_points():
    fig = score_figure([], planned=["", "p"])
    assert list(fig.data[0].x) == []


def test_loss_figure_one_line_per_step_and_model():
    events = [
        Event(id=i, run_id=1, time="t", kind="train", message="",
              data={"model": "m/small", "step": i, "total": 3, "loss": 1.0 / i, "strategy": "p -> w"})
        for i in (1, 2, 3)
    ]
    fig = loss_figure(events)
    assert len(fig.data) == 1
    assert list(fig.data[0].x) == [1, 2, 3] and fig.data[0].name == "p -> w: m/small (training)"


def test_loss_figure_charts_the_held_out_loss_and_marks_the_kept_checkpoint():
    def event(i: int, **data) -> Event:
        kind = "train" if "loss" in data else "checkpoint"
        return Event(id=i, run_id=1, time="t", kind=kind, message="", data={"model": "m/small", "strategy": "w",
                                                                              **data})

    events = [event(1, step=0, val_loss=2.0, val_exact=0.0, best=True, held_out=6)]
    events += [event(10 + i, step=i, total=6, loss=2.0 / i) for i in range(1, 7)]
    events += [event(20, step=3, val_loss=0.5, val_exact=0.5, best=True, held_out=6),
               event(21, step=6, val_loss=0.9, val_exact=0.33, best=False, held_out=6),
               event(22, chosen_step=3, stopped="budget", held_out=6)]
    fig = loss_figure(events)
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name["w: m/small (training)"].x) == [1, 2, 3, 4, 5, 6]
    held = by_name["w: m/small (held-out)"]
    assert list(held.x) == [0, 3, 6] and list(held.y) == [2.0, 0.5, 0.9]
    assert held.line.dash == "dash" and "50% exact answers" in held.customdata[1]
    kept = by_name["w: m/small: kept step 3"]
    assert list(kept.x) == [3] and list(kept.y) == [0.5] and kept.marker.symbol == "star"


def test_usage_figure_sums_calls_and_tokens_per_model():
    fig = usage_figure(_rounds())
    calls = _trace(fig, "calls")
    assert dict(zip(calls.x, calls.y, strict=True)) == {"m/large": 120, "m/small": 40}
    tokens_in = _trace(fig, "input tokens")
    assert dict(zip(tokens_in.x, tokens_in.y, strict=True)) == {"m/large": 1000, "m/small": 300}


def test_timeline_has_a_bar_per_finished_round():
    fig = timeline_figure(_rounds(), {"p": "prompt", "w": "weight"})
    assert [t.y[0] for t in fig.data] == ["baseline", "p", "p -> w"]
    assert fig.data[1].x[0] == 25_000  # 25 s in milliseconds


def test_comparison_figure_one_series_per_run_with_failures_apart():
    fig = comparison_figure({"#1 p": _rounds(), "#2 p": _rounds()[:2]})
    names = [t.name for t in fig.data]
    assert names == ["#1 p", "#1 p: evaluation failed", "#2 p"]
    assert list(fig.data[0].x) == [0, 1]


def test_label_figure_bars_per_field():
    fig = label_figure({"category": {"legal": 3, "growth": 2}})
    assert list(fig.data[0].x) == ["legal", "growth"] and list(fig.data[0].y) == [3, 2]


def test_usage_rows_sum_calls_tokens_and_known_costs() -> None:
    from core.store.records import Round
    from core.views.charts import usage_rows

    rounds = [
        Round(run_id=1, index=0, lm_usage={"openai/m": {"calls": 2, "errors": 1, "input_tokens": 10,
                                                        "output_tokens": 4, "cost": 0.5},
                                           "embedded/x": {"calls": 3, "input_tokens": 7, "output_tokens": 1,
                                                          "cost": None}}),
        Round(run_id=1, index=1, lm_usage={"openai/m": {"calls": 1, "input_tokens": 5, "output_tokens": 2,
                                                        "cost": 0.25}}),
    ]
    rows = {r["model"]: r for r in usage_rows(rounds)}
    assert rows["openai/m"]["calls"] == 3 and rows["openai/m"]["errors"] == 1
    assert rows["openai/m"]["input tokens"] == 15 and rows["openai/m"]["cost (USD)"] == 0.75
    assert rows["embedded/x"]["cost (USD)"] is None  # unknown price stays unknown, not 0
