"""The shareable report of a run: one self-contained HTML file that opens offline, with no server.

``python -m core report RUN_ID OUT.html`` and the Results page's download button both call
``write_report``; the export bundle carries it as ``report.html``. It holds the run's config (any
secret-named value masked, although the store never keeps one), the charts (plotly inlined once,
interactive), the round table and test scores, the prompt and demo diffs between rounds (and the
instructions a GEPA step tried, with their scores), what each weight step trained on, and the example
matrix with its filters (a small inline script, no network).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from core.config.schema import config_to_dict
from core.config.strategy import strategy_prefixes
from core.errors import StudioError, shown
from core.evidence.diff import PredictorDiff, ProposedCandidate, diff_html, proposed_candidates, round_diff
from core.evidence.report_assets import CSS, MATRIX_JS
from core.store import Store, is_secret_name, now_iso
from core.store.evidence import (
    SPLITS,
    MatrixQuery,
    cell_outputs,
    label_distribution,
    list_evaluations,
    matrix_page,
    training_sets,
)
from core.store.records import Round, Run
from core.store.secrets import redact, redact_value
from core.views.charts import LOSS_KINDS, label_figure, loss_figure, round_label, score_figure, usage_figure
from core.views.evidence import sources_legend
from core.views.rounds import ROUND_COLUMNS, round_table

logger = logging.getLogger(__name__)

MASK = "***"
PREVIEW_CHARS = 400


def without_secrets(value: Any) -> Any:
    """A copy of ``value`` with every non-empty string under a secret-named key replaced by ``***``."""
    if isinstance(value, dict):
        return {k: (MASK if isinstance(v, str) and v.strip() and is_secret_name(str(k)) else without_secrets(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(headers: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Charts:
    """Figures to HTML, with plotly's script inlined in the first one only."""

    def __init__(self) -> None:
        self.first = True

    def html(self, fig: go.Figure, div_id: str) -> str:
        out = fig.to_html(include_plotlyjs=self.first, full_html=False, div_id=div_id,
                          config={"displaylogo": False})
        self.first = False
        return f'<div class="chart">{out}</div>'


def _header(run: Run) -> str:
    return (f"<h1>Run #{run.id}: {_e(run.name)}</h1>"
            f'<p class="muted">status <b>{_e(run.status.value)}</b> · strategy <code>{_e(run.strategy)}'
            f"</code> · created {_e(run.created_at[:19].replace('T', ' '))} · report written {_e(now_iso()[:19])}"
            + (f" · error: {_e(redact(run.error))}" if run.error else "") + "</p>")


def _scores(run: Run, rounds: list[Round]) -> str:
    best = run.best_strategy or "baseline"
    summary = _table(["", "baseline", f"best ({best})"], [
        ["validation", _score(run.baseline_score), _score(run.best_score)],
        ["test", _score(run.test_baseline_score), _score(run.test_best_score)],
    ])
    table = _table(list(ROUND_COLUMNS), [list(row.values()) for row in round_table(rounds)])
    return f'<h2 id="scores">Scores</h2>{summary}<h3>Rounds</h3>{table}'


def _charts(store: Store, run: Run, rounds: list[Round], charts: _Charts) -> str:
    planned = strategy_prefixes(run.strategy) if run.strategy else []
    parts = [charts.html(score_figure(rounds, planned), "chart-score")]
    if any(r.lm_usage for r in rounds):
        parts.append(charts.html(usage_figure(rounds), "chart-usage"))
    train = store.list_events(run.id, kinds=LOSS_KINDS)
    if train:
        parts.append(charts.html(loss_figure(train), "chart-loss"))
    return '<h2 id="charts">Charts</h2>' + "".join(parts)


def _demo_list(demos: tuple[dict[str, Any], ...], title: str) -> str:
    if not demos:
        return ""
    items = "".join(f"<li><code>{_e(json.dumps(d, ensure_ascii=False, default=str)[:PREVIEW_CHARS])}</code></li>"
                    for d in demos)
    return f"<p class='small'><b>{title}</b></p><ul class='small'>{items}</ul>"


def diff_section(diffs: list[PredictorDiff]) -> str:
    """One block per predictor: models, the instruction diff, demos added / removed / kept."""
    out = []
    for d in diffs:
        served = (f"<span class='badge'>{_e(d.model_a)} ({d.served_a})</span> → "
                  f"<span class='badge'>{_e(d.model_b)} ({d.served_b})</span>")
        instructions = (f"<div class='diff'>{diff_html(d.words)}</div>" if d.instructions_changed
                        else f"<div class='diff muted'>unchanged: {_e(d.instructions_b)}</div>")
        counts = (f"demos: {len(d.demos_added)} added, {len(d.demos_removed)} removed, "
                  f"{len(d.demos_kept)} kept")
        out.append(f"<h4>{_e(d.name)}</h4><p>{served}</p>{instructions}<p class='small'>{counts}</p>"
                   + _demo_list(d.demos_added, "added") + _demo_list(d.demos_removed, "removed"))
    return "".join(out)


def candidates_section(tried: list[ProposedCandidate]) -> str:
    """The instructions a round's prompt step tried (GEPA's candidates): score, then the diff of each."""
    if not tried:
        return ""
    items = []
    for c in tried:
        changes = "".join(f"<p class='small'><code>{_e(name)}</code></p><div class='diff'>{diff_html(words)}</div>"
                          for name, words in c.changes) or "<p class='small muted'>instructions as the step started</p>"
        items.append(f"<li>{_e(c.label)}{changes}</li>")
    return f"<h4>Candidates the step tried ({len(tried)})</h4><ul>{''.join(items)}</ul>"


def _diffs(store: Store, run: Run, rounds: list[Round]) -> str:
    indices = [r.index for r in rounds]
    pairs = list(zip(indices, indices[1:], strict=False))
    best = next((r.index for r in rounds if r.is_best), None)
    if best not in (None, 0) and (0, best) not in pairs:
        pairs.append((0, best))
    labels = {r.index: round_label(r.strategy) for r in rounds}
    strategies = {r.index: r.strategy for r in rounds}
    parts = []
    for a, b in pairs:
        try:
            body = diff_section(round_diff(store, run.id, a, b))
        except StudioError as e:
            body = f"<p class='muted'>{_e(e)}</p>"
        if b == a + 1:  # the step of round b: what it tried
            body += candidates_section(proposed_candidates(store, run.id, strategies[b]))
        parts.append(f"<h3>Round {a} ({_e(labels[a])}) → round {b} ({_e(labels[b])})</h3>{body}")
    return '<h2 id="diffs">What changed between rounds</h2>' + ("".join(parts) or "<p class='muted'>One round only.</p>")


def _training(store: Store, run: Run, rounds: list[Round], charts: _Charts) -> str:
    sets = training_sets(store, run.id)
    if not sets:
        return ""
    labels = {r.index: round_label(r.strategy) for r in rounds}
    parts = ['<h2 id="training">What the weight steps trained on</h2>']
    for i, s in enumerate(sets):
        sources = sources_legend(s.sources)
        parts.append(f"<h3>Round {s.round_index} ({_e(labels.get(s.round_index, '?'))}): {_e(s.model)}</h3>"
                     f"<p>{s.rows} training rows · sources {_e(sources)}</p>")
        distribution = label_distribution(store, run.id, s.round_index, s.model)
        if distribution:
            parts.append(charts.html(label_figure(distribution, f"Labels trained on: {s.model}"), f"chart-labels-{i}"))
    return "".join(parts)


def matrix_data(store: Store, run_id: int) -> dict[str, Any]:
    """Every example of each split with its pass/fail cells and outputs, for the report's script."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        columns = list_evaluations(store, run_id, split)
        if not columns:
            continue
        position = {c.id: k for k, c in enumerate(columns)}
        rows: dict[int, dict[str, Any]] = {}
        offset = 0
        while True:
            page = matrix_page(store, run_id, MatrixQuery(split=split), limit=500, offset=offset)
            for r in page.rows:
                rows[r.example_index] = {
                    "i": r.example_index, "inputs": r.inputs, "gold": r.gold, "out": [""] * len(columns),
                    "cells": [None if c is None else [None if c.passed is None else int(c.passed), c.score,
                                                      c.error_kind] for c in r.cells],
                }
            offset += page.limit
            if offset >= page.total:
                break
        for evaluation_id, index, outputs, error in cell_outputs(store, run_id, split, PREVIEW_CHARS):
            if index in rows and evaluation_id in position:
                rows[index]["out"][position[evaluation_id]] = f"error: {error}" if error else outputs
        splits[split] = {"columns": [f"{c.round_index}: {c.label}" if c.round_index is not None else c.label
                                     for c in columns], "rows": list(rows.values())}
    return {"splits": splits}


def _matrix(store: Store, run_id: int) -> str:
    data = redact_value(matrix_data(store, run_id))
    if not data["splits"]:
        return ('<h2 id="examples">Examples</h2><p class="muted">This run has no per-example evidence '
                "(it was recorded before evidence existed, or stopped before its first evaluation).</p>")
    options = "".join(f'<option value="{s}">{"validation (rounds)" if s == "val" else "test"}</option>'
                      for s in data["splits"])
    filters = [("all", "all examples"), ("changed", "changed between A and B"), ("regressions",
               "regressions: passed in the first column, fails in B"), ("still_failing", "still failing in B"),
               ("errors", "parse or LM errors")]
    payload = json.dumps(data, ensure_ascii=False, default=str).replace("</", "<\\/")
    return (
        '<h2 id="examples">Examples</h2><div class="controls">'
        f'<label>split <select id="m-split">{options}</select></label>'
        '<label>filter <select id="m-filter">'
        + "".join(f'<option value="{k}">{_e(v)}</option>' for k, v in filters)
        + '</select></label><label>A <select id="m-a"></select></label><label>B <select id="m-b"></select></label>'
        '<label>search <input id="m-search" type="search" placeholder="text in inputs, gold or outputs"></label>'
        '<button id="m-prev">◀</button><button id="m-next">▶</button><span id="m-count" class="muted"></span></div>'
        '<table id="matrix"></table><div id="m-detail"></div>'
        f'<script type="application/json" id="matrix-data">{payload}</script><script>{MATRIX_JS}</script>'
    )


def build_report(store: Store, run_id: int) -> str:
    """The report of run ``run_id`` as one HTML document."""
    run = store.get_run(run_id)
    rounds = store.list_rounds(run_id)
    charts = _Charts()
    stored = config_to_dict(run.config) if run.config is not None else {"problem": run.config_problem}
    config = json.dumps(redact_value(without_secrets(stored)), indent=2, ensure_ascii=False)
    body = "".join([
        _header(run),
        '<p class="small"><a href="#scores">scores</a> · <a href="#charts">charts</a> · <a href="#diffs">diffs</a> · '
        '<a href="#training">training rows</a> · <a href="#examples">examples</a> · <a href="#config">config</a></p>',
        _scores(run, rounds),
        _charts(store, run, rounds, charts) if rounds else "",
        _diffs(store, run, rounds) if rounds else "",
        _training(store, run, rounds, charts),
        _matrix(store, run_id),
        f'<h2 id="config">Configuration</h2><pre>{_e(config)}</pre>',
    ])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Run #{run.id}: {_e(run.name)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def write_html(text: str, out: str | Path, what: str) -> Path:
    """Write a self-contained report (``what``: "run 3", "sweep 2") to ``out``, an ``.html`` file."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise StudioError(f"the report is one HTML file: give a path ending in .html, not {shown(out.name)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise StudioError(f"cannot write the report to {out}: {e}") from e
    logger.info("wrote the report of %s to %s (%d kB)", what, out, len(text) // 1024)
    return out


def write_report(store: Store, run_id: int, out: str | Path) -> Path:
    """Write the report of run ``run_id`` to ``out`` (an ``.html`` file); returns the path."""
    if Path(out).suffix.lower() not in (".html", ".htm"):
        return write_html("", out, f"run {run_id}")  # refused before the report is built
    return write_html(build_report(store, run_id), out, f"run {run_id}")
