"""The memory bound of issue 9 on the real embedded models: the supervising process's RSS after five
runs is within 100 MB of its RSS after the first (each run's models live and die in its worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.time_limit(1800)]


def test_five_embedded_runs_leave_the_supervisor_flat(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/run_memory.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=1700, env={**os.environ, "STUDIO_HOME": str(tmp_path / "home")})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["statuses"] == ["finished"] * 5, result["errors"]
    assert result["growth_mb"] is not None and result["growth_mb"] <= 100, result
    # the models were loaded and fine-tuned in the workers, not here
    assert min(result["worker_peak_rss_mb"]) > 500 > result["rss_after_last_mb"] - result["supervisor_rss_mb_before"]
    assert out.returncode == 0
