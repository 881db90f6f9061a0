"""The quality benchmark's smoke mode on the real embedded models (one sample task), and --merge on its
output: the command docs/benchmarks.md's quality table comes from keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ["baseline", "p", "w", "p -> w", "p -> w -> p"]

pytestmark = [pytest.mark.slow, pytest.mark.time_limit(1200)]


def _bench(*args: str, home: Path) -> dict:
    out = subprocess.run([sys.executable, "bench/quality.py", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=1100, env={**os.environ, "STUDIO_HOME": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_quick_quality_run_scores_every_strategy_and_merges(tmp_path: Path) -> None:
    first = tmp_path / "seed0.json"
    result = _bench("--quick", "--tasks", "classifier", "--out", str(first), home=tmp_path / "home")
    row = result["table"]["classifier"]
    assert [s for s in STRATEGIES if row[s]["mean"] is None] == []  # every strategy scored on test
    assert all(0.0 <= row[s]["mean"] <= 100.0 for s in STRATEGIES)
    run = result["runs"][0]
    assert run["default_run"]["status"] == "finished"
    assert {"baseline evaluation", "training", "test"} <= set(run["phases"]["p -> w"])  # where the time went
    assert run["estimate"]["error_pct"] is not None
    assert set(result["targets"]) >= {"pwp_beats_baseline_by_30_on_2_tasks", "pwp_beats_p_and_w_on_2_tasks"}
    second = tmp_path / "seed1.json"  # the same numbers as another seed's process would write them
    document = json.loads(first.read_text(encoding="utf-8"))
    for other in document["runs"]:
        other["seed"] = 1
    second.write_text(json.dumps(document), encoding="utf-8")
    merged = _bench("--merge", str(first), str(second), home=tmp_path / "home")
    assert merged["table"]["classifier"]["p"]["seeds"] == row["p"]["seeds"] * 2
    assert merged["table"]["classifier"]["p"]["sd"] == 0.0
    again = _bench("--merge", str(first), str(first), home=tmp_path / "home")  # one seed measured twice: once
    assert again["table"]["classifier"]["p"]["seeds"] == row["p"]["seeds"]
