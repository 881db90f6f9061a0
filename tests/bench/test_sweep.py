"""The sweep benchmark's CI-sized mode: a scripted sweep of five strategies x 3 seeds, and the default
template's three strategies as one sweep against three separate runs, with the same results both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.time_limit(600)]


def test_quick_sweep_bench(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/sweep.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                         timeout=550, env={**os.environ, "STUDIO_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    scripted = result["scripted"]
    assert (scripted["status"], scripted["child_runs"], scripted["standalone_runs"]) == ("finished", 6, 15)
    assert all(len(row["seeds"]) == 3 and None not in row["seeds"] for row in scripted["table"].values())
    shared = result["shared"]
    assert shared["runs"] == {"sweep": 1, "separate": 3}
    assert shared["same_results"], shared["mismatches"]  # a strategy read from a longer run = the run of it alone
    assert shared["saving_ratio"] > 1.0
