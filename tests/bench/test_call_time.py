"""bench/call_time.py: its least-squares fit recovers known coefficients, and on the real embedded model
(--quick) it times each call, counts the answer's tokens and names what the estimate says for the predictor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config.defaults import default_config
from core.data import load_table_from_path
from core.plan.estimate import ANSWER_MARKER_TOKENS, data_label_choices, embedded_call_seconds, inspected_program
from core.plan.prepare import data_source_path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from call_time import least_squares  # noqa: E402


def test_least_squares_recovers_the_coefficients_of_exact_data() -> None:
    rows = [(1.0, x, y) for x in (10.0, 50.0, 200.0) for y in (5.0, 30.0, 90.0)]
    ys = [0.2 + 0.001 * x + 0.0125 * y for _, x, y in rows]
    assert least_squares(rows, ys) == pytest.approx([0.2, 0.001, 0.0125])


@pytest.mark.slow
@pytest.mark.time_limit(300)
def test_each_call_is_timed_and_its_answer_counted(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/call_time.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=240, env={**os.environ, "STUDIO_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "call_time" and result["quick"] and result["fit"] is None  # one predictor: no fit
    (row,) = result["per_predictor"]
    assert (row["template"], row["predictor"], row["calls"]) == ("classifier", "classify", 2)
    # one label: its marker, the closing marker and a word or two (measured idle: 16 tokens in 0.33 s)
    assert 2 * ANSWER_MARKER_TOKENS - 4 < row["answer_tokens"] < 40 and 0 < row["seconds"] < 10
    config = default_config("classifier")
    table = load_table_from_path(data_source_path(config))
    program = inspected_program(config, data_label_choices(config, table))
    assert row["estimate_seconds"] == round(embedded_call_seconds(config, program, table, "classify"), 3)
