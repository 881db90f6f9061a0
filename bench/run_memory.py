"""Benchmark: the supervising process's memory stays flat while runs come and go.

Each run's optimization happens in its own worker process (``core.run.worker``): the embedded
models, fine-tuned weights and DSPy's history live and die there. This starts ``--runs`` (5)
embedded runs one after the other from one ``RunManager`` (as the app does) and measures this
process's RSS after each; the bound of issue 9 is: RSS after the last run within 100 MB of RSS
after the first. It also reports each worker's peak RSS (what the app would have kept before)
and the worker's start-up time (spawn + imports + preparing the run, until its first event).

Prints progress on stderr and one JSON object as the last line of stdout.

    python bench/run_memory.py             # default embedded models, small budget ('p -> w' on 6/3/3)
    python bench/run_memory.py --quick     # CI: tiny budget (3/1/1 examples, strategy 'w')
    python bench/run_memory.py --quick --lm scripted   # no models at all: checks the harness in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_common import rss_mb  # noqa: E402 - bench/ is on sys.path when run as a script

BOUND_MB = 100.0


def _config(lm: str, quick: bool):
    from core.config.defaults import default_config_dict, scripted_config_dict, with_smoke_budget
    from core.config.schema import parse_config

    doc = scripted_config_dict("classifier") if lm == "scripted" else default_config_dict()
    if quick:
        with_smoke_budget(doc, train=3, val=1, test=1)
        doc["strategy"] = "w"
    else:
        with_smoke_budget(doc)
    if lm == "scripted":
        for spec in doc["lms"].values():
            spec["options"]["local_cpu"] = True  # queued like the embedded models
    return parse_config(doc)


def _worker_startup_s(store, run_id: int) -> float | None:
    """Seconds from the worker's start to its first own event (the run's setup)."""
    started = next((e for e in store.list_events(run_id, kinds=["status"]) if "worker_pid" in e.data), None)
    setup = store.latest_event(run_id, "setup")
    if started is None or setup is None:
        return None
    return round((datetime.fromisoformat(setup.time) - datetime.fromisoformat(started.time)).total_seconds(), 2)


def _one_run(manager, config) -> dict:
    with contextlib.redirect_stdout(sys.stderr):
        run_id = manager.start(config)
    peak = None
    while not manager.wait(run_id, timeout=0.1):
        row = manager.store.db.execute("select worker_pid from runs where id = ?", [run_id]).fetchone()
        if row and row[0]:
            hwm = rss_mb(row[0], "VmHWM")
            peak = max(peak or 0.0, hwm or 0.0) or peak
    run = manager.store.get_run(run_id)
    gc.collect()
    return {"run_id": run_id, "status": run.status.value, "error": run.error, "rss_mb": rss_mb(),
            "worker_peak_rss_mb": peak, "worker_startup_s": _worker_startup_s(manager.store, run_id)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budget (CI)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lm", choices=["embedded", "scripted"], default="embedded")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("STUDIO_HOME", tempfile.mkdtemp(prefix="bench-memory-"))
    os.environ.setdefault("STUDIO_MODEL_CACHE", str(ROOT / ".studio" / "models"))

    from core.paths import db_path
    from core.run import RunManager
    from core.store import Store

    config = _config(args.lm, args.quick)
    manager = RunManager(Store(db_path()))
    started = time.monotonic()
    before = rss_mb()
    runs = []
    for i in range(args.runs):
        result = _one_run(manager, config)
        runs.append(result)
        print(f"run {i + 1}/{args.runs}: {result['status']}, supervisor RSS {result['rss_mb']} MB, worker peak "
              f"{result['worker_peak_rss_mb']} MB, worker start-up {result['worker_startup_s']} s",
              file=sys.stderr, flush=True)
    first, last = runs[0]["rss_mb"], runs[-1]["rss_mb"]
    growth = None if first is None or last is None else round(last - first, 1)
    finished = all(r["status"] == "finished" for r in runs)
    summary = {
        "benchmark": "run_memory",
        "lm": args.lm,
        "quick": args.quick,
        "runs": args.runs,
        "strategy": config.strategy,
        "supervisor_rss_mb_before": before,
        "supervisor_rss_mb_after_each": [r["rss_mb"] for r in runs],
        "rss_after_first_mb": first,
        "rss_after_last_mb": last,
        "growth_mb": growth,
        "bound_mb": BOUND_MB,
        "within_bound": growth is not None and growth <= BOUND_MB,
        "worker_peak_rss_mb": [r["worker_peak_rss_mb"] for r in runs],
        "worker_startup_s": [r["worker_startup_s"] for r in runs],
        "statuses": [r["status"] for r in runs],
        "errors": [r["error"] for r in runs if r["error"]],
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary))
    return 0 if finished and summary["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
