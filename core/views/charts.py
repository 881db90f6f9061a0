"""Plotly figure builders for the dashboard. Each returns a figure; the page renders it.

Scores are DSPy's validation scores (0-100). A failed evaluation is drawn as a failure (a red
cross on the axis with the error in its hover text), never as a score of 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.store.records import Event, Round

FAILED_COLOR = "#d62728"
BEST_COLOR = "#f5a300"
LINE_COLOR = "#1f77b4"
KIND_COLORS = {"baseline": "#7f7f7f", "prompt": "#1f77b4", "weight": "#2ca02c"}
HEIGHT = 340


def round_label(strategy: str) -> str:
    """``""`` -> ``"baseline"``; ``"p -> w"`` -> ``"p -> w"``."""
    return strategy or "baseline"


def _layout(fig: go.Figure, title: str, **kwargs) -> go.Figure:
    fig.update_layout(
        title=title, height=HEIGHT, margin={"l": 50, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.2}, **kwargs,
    )
    return fig


def score_figure(rounds: Sequence[Round], planned: Sequence[str] = (), title: str = "Validation score per round") -> go.Figure:
    """Score per round against the baseline; points labelled with their strategy prefix, best starred,
    failed evaluations as red crosses on the axis. ``planned`` prefixes fix the x axis in advance."""
    labels = list(dict.fromkeys([*(round_label(s) for s in planned), *(round_label(r.strategy) for r in rounds)]))
    fig = go.Figure()
    ok = [r for r in rounds if r.score is not None]
    failed = [r for r in rounds if r.score is None]
    fig.add_trace(go.Scatter(
        x=[round_label(r.strategy) for r in ok], y=[r.score for r in ok], mode="lines+markers+text",
        text=[round_label(r.strategy) for r in ok], textposition="top center", name="validation score",
        line={"color": LINE_COLOR}, marker={"size": 10},
        hovertemplate="%{x}: %{y:.1f}<extra></extra>",
    ))
    baseline = next((r for r in rounds if r.index == 0 and r.score is not None), None)
    if baseline is not None:
        fig.add_hline(y=baseline.score, line_dash="dash", line_color=KIND_COLORS["baseline"],
                      annotation_text=f"baseline {baseline.score:.1f}", annotation_position="bottom right")
    best = [r for r in ok if r.is_best]
    if best:
        fig.add_trace(go.Scatter(
            x=[round_label(r.strategy) for r in best], y=[r.score for r in best], mode="markers", name="best",
            marker={"symbol": "star", "size": 20, "color": BEST_COLOR, "line": {"width": 1, "color": "black"}},
            hovertemplate="best: %{x} (%{y:.1f})<extra></extra>",
        ))
    if failed:
        fig.add_trace(go.Scatter(
            x=[round_label(r.strategy) for r in failed], y=[0] * len(failed), mode="markers",
            name="evaluation failed", marker={"symbol": "x", "size": 14, "color": FAILED_COLOR},
            customdata=[f"evaluation failed: {r.eval_error or 'unknown error'}" for r in failed],
            hovertemplate="%{x}: %{customdata}<extra></extra>",
        ))
    fig.update_xaxes(categoryorder="array", categoryarray=labels, type="category", title="round (strategy prefix)")
    fig.update_yaxes(range=[-5, 105], title="validation score (%)")
    return _layout(fig, title)


LOSS_KINDS = ["train", "checkpoint"]
"""The events of the loss chart: training steps, and the checkpoints scored on validation rows (with the one kept)."""


def loss_figure(train_events: Iterable[Event], title: str = "Fine-tuning loss") -> go.Figure:
    """Loss per training step, one line per weight step and model (from ``train`` events), with the loss on the
    held-out rows at each checkpoint (dashed) and the checkpoint the fine-tune kept (a star), as hosted
    fine-tuning dashboards chart training and validation loss."""
    train: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    held: dict[str, tuple[list[int], list[float], list[str]]] = defaultdict(lambda: ([], [], []))
    chosen: dict[str, tuple[int, str]] = {}
    for event in train_events:
        data = event.data
        name = f"{data.get('strategy', '')}: {data.get('model', '')}".strip(": ")
        if "chosen_step" in data:
            chosen[name] = (int(data["chosen_step"]), str(data.get("stopped", "")))
        elif "val_loss" in data and "step" in data:
            held[name][0].append(int(data["step"]))
            held[name][1].append(float(data["val_loss"]))
            held[name][2].append(f"{100 * float(data.get('val_exact') or 0):.0f}% exact answers")
        elif "loss" in data and "step" in data:
            train[name][0].append(int(data["step"]))
            train[name][1].append(float(data["loss"]))
    fig = go.Figure()
    for name in dict.fromkeys([*train, *held]):
        steps, losses = train.get(name, ([], []))
        if steps:
            fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines+markers", name=f"{name} (training)",
                                     legendgroup=name))
        if name in held:
            v_steps, v_losses, notes = held[name]
            fig.add_trace(go.Scatter(x=v_steps, y=v_losses, mode="lines+markers", name=f"{name} (held-out)",
                                     legendgroup=name, line={"dash": "dash"}, customdata=notes,
                                     hovertemplate="step %{x}: held-out loss %{y:.4f}, %{customdata}<extra></extra>"))
        if name in chosen and chosen[name][0] in held.get(name, ([],))[0]:
            step = chosen[name][0]
            loss = held[name][1][held[name][0].index(step)]
            fig.add_trace(go.Scatter(x=[step], y=[loss], mode="markers", name=f"{name}: kept step {step}",
                                     legendgroup=name, marker={"symbol": "star", "size": 16},
                                     hovertemplate=f"kept: step {step} (the best held-out score)<extra></extra>"))
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="loss")
    return _layout(fig, title)


def usage_totals(rounds: Iterable[Round]) -> dict[str, dict[str, int]]:
    """Calls and tokens per model summed over rounds."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"calls": 0, "input_tokens": 0, "output_tokens": 0})
    for r in rounds:
        for model, usage in (r.lm_usage or {}).items():
            for k in ("calls", "input_tokens", "output_tokens"):
                totals[model][k] += int(usage.get(k) or 0)
    return dict(totals)


def usage_rows(rounds: Iterable[Round]) -> list[dict[str, object]]:
    """One row per model: calls, errors, tokens and cost in USD (None where the price is unknown)."""
    rows: dict[str, dict[str, object]] = {}
    for r in rounds:
        for model, usage in (r.lm_usage or {}).items():
            row = rows.setdefault(model, {"model": model, "calls": 0, "errors": 0, "input tokens": 0,
                                          "output tokens": 0, "cost (USD)": None})
            row["calls"] += int(usage.get("calls") or 0)
            row["errors"] += int(usage.get("errors") or 0)
            row["input tokens"] += int(usage.get("input_tokens") or 0)
            row["output tokens"] += int(usage.get("output_tokens") or 0)
            if usage.get("cost") is not None:
                row["cost (USD)"] = round(float(row["cost (USD)"] or 0.0) + float(usage["cost"]), 6)
    return list(rows.values())


def usage_figure(rounds: Iterable[Round], title: str = "LM calls and tokens per model") -> go.Figure:
    totals = usage_totals(rounds)
    models = list(totals)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("calls", "tokens"))
    fig.add_trace(go.Bar(x=models, y=[totals[m]["calls"] for m in models], name="calls", marker_color=LINE_COLOR),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=models, y=[totals[m]["input_tokens"] for m in models], name="input tokens",
                         marker_color="#9467bd"), row=1, col=2)
    fig.add_trace(go.Bar(x=models, y=[totals[m]["output_tokens"] for m in models], name="output tokens",
                         marker_color="#8c564b"), row=1, col=2)
    fig.update_layout(barmode="stack")
    return _layout(fig, title)


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def timeline_figure(rounds: Sequence[Round], kinds: dict[str, str] | None = None,
                    title: str = "Step timeline") -> go.Figure:
    """One horizontal bar per round from its start to its end, coloured by step kind."""
    kinds = kinds or {}
    fig = go.Figure()
    for r in rounds:
        start, end = _time(r.started_at), _time(r.finished_at)
        if start is None or end is None:
            continue
        kind = "baseline" if r.index == 0 else kinds.get(r.step_key or "", "prompt")
        seconds = (end - start).total_seconds()
        fig.add_trace(go.Bar(
            y=[round_label(r.strategy)], x=[seconds * 1000], base=[start], orientation="h",
            marker_color=KIND_COLORS.get(kind, LINE_COLOR), name=kind, showlegend=False,
            hovertemplate=f"{round_label(r.strategy)} ({kind}): {seconds:.1f} s<extra></extra>",
        ))
    fig.update_xaxes(type="date", title="time")
    fig.update_yaxes(autorange="reversed", type="category")
    return _layout(fig, title)


def comparison_figure(runs: dict[str, Sequence[Round]], title: str = "Validation score per round") -> go.Figure:
    """Score per round of several runs on one chart (failed evaluations as red crosses)."""
    fig = go.Figure()
    for label, rounds in runs.items():
        ok = [r for r in rounds if r.score is not None]
        fig.add_trace(go.Scatter(
            x=[r.index for r in ok], y=[r.score for r in ok], mode="lines+markers", name=label,
            text=[round_label(r.strategy) for r in ok], hovertemplate=f"{label}<br>%{{text}}: %{{y:.1f}}<extra></extra>",
        ))
        failed = [r for r in rounds if r.score is None]
        if failed:
            fig.add_trace(go.Scatter(
                x=[r.index for r in failed], y=[0] * len(failed), mode="markers", name=f"{label}: evaluation failed",
                marker={"symbol": "x", "size": 12, "color": FAILED_COLOR},
                customdata=[f"evaluation failed: {r.eval_error or 'unknown error'}" for r in failed],
                hovertemplate="%{customdata}<extra></extra>",
            ))
    fig.update_xaxes(title="round", dtick=1)
    fig.update_yaxes(range=[-5, 105], title="validation score (%)")
    return _layout(fig, title)


def label_figure(distribution: dict[str, dict[str, int]], title: str = "Label distribution") -> go.Figure:
    """Bars of how often each label value occurs, one group per label field."""
    fig = go.Figure()
    for field, counts in distribution.items():
        fig.add_trace(go.Bar(x=list(counts), y=list(counts.values()), name=field))
    fig.update_yaxes(title="rows")
    return _layout(fig, title, barmode="group")


PHASE_COLORS = {"baseline evaluation": "#7f7f7f", "prompt search": "#1f77b4", "trace collection": "#ff7f0e",
                "training": "#2ca02c", "GGUF export": "#17becf", "evaluation": "#9467bd", "other": "#c7c7c7"}


def phases_figure(rounds: Sequence[Round], title: str = "Where the time went") -> go.Figure:
    """One stacked horizontal bar per round: seconds per phase (``details.phases``)."""
    fig = go.Figure()
    names = list(dict.fromkeys(name for r in rounds for name in r.details.phases))
    labels = [round_label(r.strategy) for r in rounds]
    for name in sorted(names, key=lambda n: list(PHASE_COLORS).index(n) if n in PHASE_COLORS else 99):
        values = [r.details.phases.get(name, 0.0) for r in rounds]
        fig.add_trace(go.Bar(y=labels, x=values, orientation="h", name=name, marker_color=PHASE_COLORS.get(name),
                             hovertemplate=f"%{{y}}: {name} %{{x:.1f}} s<extra></extra>"))
    fig.update_xaxes(title="seconds")
    fig.update_yaxes(autorange="reversed", type="category")
    return _layout(fig, title, barmode="stack")


def compare_test_scores(baseline: float | None, best: float | None, best_strategy: str | None) -> tuple[str, str] | None:
    """("warning" | "success" | "info", message) comparing the test scores of baseline and best."""
    if baseline is None or best is None:
        return None
    name = best_strategy or "baseline"
    if best < baseline:
        return ("warning", f"On the test split the best program ('{name}', chosen on validation) scores {best:.1f}, "
                           f"below the baseline's {baseline:.1f}: the validation gain did not carry over.")
    if best > baseline:
        return ("success", f"On the test split the best program ('{name}') scores {best:.1f}, "
                           f"{best - baseline:.1f} points above the baseline's {baseline:.1f}.")
    return ("info", f"On the test split the best program ('{name}') ties the baseline at {baseline:.1f}.")
