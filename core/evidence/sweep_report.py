"""The shareable report of a sweep: one self-contained HTML file that opens offline, with no server.

``python -m core sweep-report SWEEP_ID OUT.html`` and the Results page's Sweep view both call it. It
holds the verdict (which strategy won, by how much, with what confidence), the table in the paper's
form (strategies x seeds, mean ± sd, the best of each column in bold), the chart of test score per
strategy with the seed points and the spread (plotly inlined, interactive), time and cost per strategy
and what prefix sharing saved, the win/loss examples of the best strategy against each other one, the
child runs and the configuration (secret-named values masked; the store never keeps a key). The
numbers and rows are ``core.views.sweep``'s, as on the page.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config.schema import config_to_dict
from core.evidence.report import without_secrets, write_html
from core.evidence.report_assets import CSS
from core.store import Store, now_iso
from core.store.secrets import redact, redact_value
from core.store.sweep_records import Sweep, SweepSummary
from core.views.sweep import (
    SweepTable,
    children_rows,
    cost_rows,
    current_summary,
    pair_counts,
    pair_records,
    paired_examples,
    paper_table,
    sharing_line,
    sweep_figure,
    verdicts,
)

logger = logging.getLogger(__name__)

MAX_PAIR_ROWS = 300
"""Most win/loss rows shown per comparison (the counts cover them all)."""
VERDICT_CLASSES = {"beats": "pass", "noise": "none", "best": "", "none": "none"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


CELL_CLASSES = {"✓": "pass", "✗": "fail", "⚠": "err", "A wins": "pass", "B wins": "fail"}


def _cell_class(value: Any) -> str:
    text = str(value)
    return next((css for start, css in CELL_CLASSES.items() if text.startswith(start)), "")


def _records_table(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return "<p class='muted'>none</p>"
    headers = list(records[0])
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class='{_cell_class(r[h])}'>{_e(redact(str(r[h])))}</td>" for h in headers)
                   + "</tr>" for r in records)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_html(table: SweepTable) -> str:
    """The paper's table: the best of each column in bold."""
    head = "".join(f"<th>{_e(h)}</th>" for h in table.headers)
    rows = "".join("<tr>" + "".join(
        f"<td>{'<b>' if c.bold else ''}{f'<code>{_e(c.text)}</code>' if i == 0 else _e(c.text)}{'</b>' if c.bold else ''}"
        "</td>" for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    return f"<table class='sweep'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _header(sweep: Sweep, summary: SweepSummary) -> str:
    strategies = ", ".join(f"<code>{_e(s)}</code>" for s in summary.strategies)
    return (f"<h1>Sweep #{sweep.id}: {_e(sweep.name)}</h1>"
            f"<p class='muted'>status <b>{_e(sweep.status.value)}</b> · strategies {strategies} · seeds "
            f"{_e(', '.join(str(s) for s in summary.seeds))} · created {_e(sweep.created_at[:19].replace('T', ' '))} · "
            f"report written {_e(now_iso()[:19])}" + (f" · error: {_e(redact(sweep.error))}" if sweep.error else "")
            + "</p>")


def _verdict(summary: SweepSummary) -> str:
    items = "".join(f"<li class='{VERDICT_CLASSES[v.kind]}'>{_e(v.text)}</li>" for v in verdicts(summary))
    return f"<h2 id='verdict'>Verdict</h2><ul class='verdict'>{items}</ul>"


def _pairs(store: Store, summary: SweepSummary) -> str:
    parts = ["<h2 id='pairs'>Example by example</h2><p class='small'>The best strategy (A) against each other one "
             "(B) on the same test examples, seed by seed: the examples where one scores higher (✓ pass, ✗ fail, "
             "⚠ parse or LM error).</p>"]
    for c in summary.comparisons:
        examples = paired_examples(store, summary, c.a, c.b)
        counts = pair_counts(examples)
        records = pair_records(examples, c.a, c.b, changed_only=True)
        parts.append(f"<h3><code>{_e(c.a)}</code> against <code>{_e(c.b)}</code></h3><p>{_e(c.sentence)}.</p>"
                     f"<p class='small'>{counts['win']} A wins, {counts['loss']} B wins, {counts['tie']} ties on "
                     f"{len(examples)} paired test answers" + (f"; the first {MAX_PAIR_ROWS} rows" if len(records)
                                                                 > MAX_PAIR_ROWS else "") + "</p>")
        parts.append(_records_table(records[:MAX_PAIR_ROWS]))
    return "".join(parts) if summary.comparisons else ""


def build_sweep_report(store: Store, sweep_id: int) -> str:
    """The report of sweep ``sweep_id`` as one HTML document (its results so far while it runs)."""
    sweep = store.get_sweep(sweep_id)
    summary = current_summary(store, sweep)
    chart = sweep_figure(summary).to_html(include_plotlyjs=True, full_html=False, div_id="chart-sweep",
                                         config={"displaylogo": False})
    stored = config_to_dict(sweep.config) if sweep.config is not None else {"problem": sweep.config_problem}
    config = json.dumps(redact_value(without_secrets(stored)), indent=2, ensure_ascii=False)
    body = "".join([
        _header(sweep, summary),
        "<p class='small'><a href='#verdict'>verdict</a> · <a href='#table'>table</a> · <a href='#cost'>time and "
        "cost</a> · <a href='#pairs'>example by example</a> · <a href='#runs'>runs</a> · <a href='#config'>config</a></p>",
        _verdict(summary),
        "<h2 id='table'>Test score per strategy and seed</h2>", table_html(paper_table(summary)),
        "<p class='small muted'>Each strategy's score is the round a run of it alone keeps (its best on validation), "
        "scored on the test split; the best of each column in bold.</p>",
        f"<div class='chart'>{chart}</div>",
        "<h2 id='cost'>Time and cost per strategy</h2>", _records_table(cost_rows(summary)),
        f"<p>{_e(sharing_line(summary))}</p>",
        _pairs(store, summary),
        "<h2 id='runs'>Runs</h2>", _records_table(children_rows(summary.children)),
        f"<h2 id='config'>Configuration</h2><pre>{_e(config)}</pre>",
    ])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Sweep #{sweep.id}: {_e(sweep.name)}'
            f"</title><style>{CSS}</style></head><body>{body}</body></html>")


def write_sweep_report(store: Store, sweep_id: int, out: str | Path) -> Path:
    """Write the report of sweep ``sweep_id`` to ``out`` (an ``.html`` file); returns the path."""
    if Path(out).suffix.lower() not in (".html", ".htm"):
        return write_html("", out, f"sweep {sweep_id}")  # refused before the report is built
    return write_html(build_sweep_report(store, sweep_id), out, f"sweep {sweep_id}")
