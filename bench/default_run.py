"""Benchmark: the default offline run end to end (sample data, default p -> w -> p, default models).

Prints progress on stderr and one JSON object as the last line of stdout:
wall time, baseline, each round (score, seconds, LM calls), best validation and test scores,
and whether the best beat the baseline on the test split.

    python bench/default_run.py            # the default run as a first-time user gets it
    python bench/default_run.py --quick    # 3/1/1 examples, strategy w: about a minute once weights are cached

What a lever saves, measured by switching it off (one run each, on an idle machine):

    python bench/default_run.py --no-call-cache            # every call generates (no per-run call cache)
    python bench/default_run.py --set w.trace_source=self  # the weight step trains on the program's own traces
    python bench/default_run.py --set p.num_candidate_programs=4

The estimate against a user's data: ``--template classifier --data long_reviews.json`` (same columns).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import quiet_logging, rss_mb  # noqa: E402 - bench/ is on sys.path when run as a script


def _seconds(started: str | None, finished: str | None) -> float | None:
    if not started or not finished:
        return None
    return round((datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds(), 1)


def measure_run(config: Any, *, quick: bool = False, call_cache: bool = True,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run of ``config`` as the product runs it (``RunManager``, its own worker process, the database of
    ``$STUDIO_HOME``), its events on stderr, and the measures this benchmark prints. ``quick``, ``call_cache``
    and ``overrides`` are only recorded: the caller applied them. ``bench/vs_dspy.py``'s Studio side runs here."""
    from core.paths import db_path
    from core.plan.estimate import estimate_from_source
    from core.run import RunManager
    from core.store import Store

    predicted = estimate_from_source(config).seconds  # what the Strategy page shows before the run
    manager = RunManager(Store(db_path()))
    started = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):
        run_id = manager.start(config)
        seen = 0
        worker_peak = None  # the worker process's peak RSS (VmHWM), read while it lives
        while not manager.wait(run_id, timeout=1.0):
            row = manager.store.db.execute("select worker_pid from runs where id = ?", [run_id]).fetchone()
            if row and row[0]:
                worker_peak = max(worker_peak or 0.0, rss_mb(row[0], "VmHWM") or 0.0) or worker_peak
            for event in manager.store.list_events(run_id, since_id=seen):
                seen = event.id
                if event.kind not in ("progress",):
                    print(f"[{time.monotonic() - started:7.1f}s] {event.kind}: {event.message}", file=sys.stderr)
    wall = time.monotonic() - started
    store = manager.store
    run = store.get_run(run_id)
    rounds = store.list_rounds(run_id)
    result = {
        "bench": "default_run",
        "quick": quick,
        "template": config.program.name if config.program.kind == "template" else config.program.kind,
        "strategy": config.strategy,
        "call_cache": call_cache,
        "overrides": overrides or {},
        "models": {name: _model_of(spec) for name, spec in config.lms.items()},
        "split": list(config.data.split.sizes()),
        "status": run.status.value,
        "error": run.error,
        "wall_seconds": round(wall, 1),
        "worker_peak_rss_mb": worker_peak,
        "goal_seconds": 300,  # issue 11: the default run in 5 minutes on 2 cores
        "estimate_seconds": round(predicted, 1),
        "estimate_error_pct": round(100 * (predicted - wall) / wall, 1) if wall else None,
        "baseline_val": run.baseline_score,
        "best_val": run.best_score,
        "best_strategy": run.best_strategy,
        "test_baseline": run.test_baseline_score,
        "test_best": run.test_best_score,
        "best_beats_baseline_on_test": (
            run.test_best_score is not None and run.test_baseline_score is not None
            and run.test_best_score > run.test_baseline_score
        ),
        "cache": next((e.data for e in store.list_events(run_id, kinds=["cache"])), None),
        "rounds": [
            {
                "strategy": r.strategy or "baseline",
                "score": r.score,
                "eval_failed": r.eval_failed,
                "seconds": _seconds(r.started_at, r.finished_at),
                "lm_calls": sum(u.get("calls", 0) for u in r.lm_usage.values()),
                "details": r.details.to_json(),
            }
            for r in rounds
        ],
    }
    return result


def _model_of(spec: Any) -> str:
    """The model an LM spec names (a factory LM: its import path; a local one: its path)."""
    return getattr(spec, "model", None) or getattr(spec, "factory", None) or str(getattr(spec, "path", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test of the whole path)")
    parser.add_argument("--template", default=None, help="default: core.config.defaults.DEFAULT_TEMPLATE")
    parser.add_argument("--strategy", default=None, help="override the strategy, e.g. 'p -> w'")
    parser.add_argument("--no-call-cache", action="store_true", help="switch the per-run call cache off")
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="the template's run on this data file instead of its sample (same columns)")
    parser.add_argument("--small", action="append", default=[], metavar="PREDICTOR",
                        help="also give PREDICTOR the small role (fine-tuned, on the small-role LM)")
    parser.add_argument("--set", action="append", default=[], metavar="STEP.SETTING=VALUE",
                        help="override an optimizer setting of the default config (value parsed as JSON), repeatable")
    args = parser.parse_args()
    if args.no_call_cache:
        os.environ["STUDIO_CALL_CACHE"] = "0"  # the run's worker process inherits it
    quiet_logging()
    os.environ.setdefault("STUDIO_HOME", tempfile.mkdtemp(prefix="bench-default-"))

    from core.config.defaults import default_config_dict, with_smoke_budget
    from core.config.schema import parse_config

    doc = default_config_dict(args.template) if args.template else default_config_dict()
    if args.quick:
        with_smoke_budget(doc, train=3, val=1, test=1)
        doc["strategy"] = "w"  # the weight path end to end (a prompt step adds ~45 s here)
    if args.strategy:
        doc["strategy"] = args.strategy
    overrides = {}
    for item in args.set:
        target, _, raw = item.partition("=")
        step, _, setting = target.partition(".")
        if not raw or not setting or step not in doc.get("optimizers", {}):
            raise SystemExit(f"--set {item!r}: expected STEP.SETTING=VALUE with STEP one of "
                             f"{sorted(doc.get('optimizers', {}))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        doc["optimizers"][step].setdefault("settings", {})[setting] = value
        overrides[target] = value
    if args.data:
        if not Path(args.data).is_file():
            raise SystemExit(f"--data {args.data!r}: no such file")
        doc["data"]["source"] = {"kind": "file", "path": str(Path(args.data).resolve())}
        overrides["data"] = str(Path(args.data).resolve())
    for name in args.small:
        if name not in doc["predictors"]:
            raise SystemExit(f"--small {name!r}: the program's predictors are {sorted(doc['predictors'])}")
        doc["predictors"][name] = {"lm": "small", "role": "small"}
        overrides[f"{name}.role"] = "small"
    config = parse_config(doc)
    result = measure_run(config, quick=args.quick, call_cache=not args.no_call_cache, overrides=overrides)
    print(json.dumps(result))
    return 0 if result["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
