"""Benchmark: sweeps (strategies x seeds as one job) through the product, and what shared prefixes save.

Two parts, each through the product's own ``SweepManager`` and ``RunManager`` (as the CLI and the pages
start them), on a fresh store:

* ``scripted``: a sweep of the five strategies (p, w, p -> w, w -> p, p -> w -> p) x 3 seeds on the
  scripted test LM (the classifier template): the wall time of the sweep and of each child run, and the
  table (mean +- sd per strategy). ``--executor ray`` runs it through Ray (``RAY_ADDRESS``, else a local
  instance of this machine's CPUs, started before the sweep and timed apart: ``ray_start_s``; the Ray extra,
  ``make install-ray``), each child run a Ray task, up to 4 at once.
* ``shared``: the default template's three strategies that share ``p -> w -> p`` (p, p -> w, p -> w -> p),
  3 seeds, as one sweep (one run per seed) against three separate runs per seed: both wall times and the
  saving as a ratio (separate / sweep), and whether every strategy's test score is the same both ways (it
  must be: a strategy read from a longer run is the run of it alone). On the embedded models (about an hour
  on 2 cores); ``--quick``: on the scripted LM, 1 seed (seconds).

    python bench/sweep.py                 # both parts; the shared part on the embedded models (~1 h)
    python bench/sweep.py --quick         # CI-sized: scripted sweep, shared part on the scripted LM, 1 seed
    python bench/sweep.py --part scripted --executor local
    python bench/sweep.py --part shared --seeds 0 1 2

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import quiet_logging  # noqa: E402 - bench/ is on sys.path when run as a script

FIVE = ["p", "w", "p -> w", "w -> p", "p -> w -> p"]
SHARED = ["p", "p -> w", "p -> w -> p"]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _managers(home: Path) -> tuple[Any, Any]:
    from core.run import RunManager
    from core.run.sweep import SweepManager
    from core.store import Store

    runs = RunManager(Store(home / "bench.db"))
    return runs, SweepManager(runs)


def _sweep(sweeps: Any, doc: dict[str, Any], strategies: list[str], seeds: list[int], executor: str) -> dict[str, Any]:
    """Run one sweep to its end; its summary, wall time and the children's times."""
    from core.config.schema import parse_config

    doc = {**doc, "sweep": {"strategies": strategies, "seeds": seeds}, "executor": {"kind": executor}}
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # DSPy prints progress
        sweep_id = sweeps.start(parse_config(doc))
        sweeps.wait(sweep_id)
    wall = time.perf_counter() - started
    sweep = sweeps.store.get_sweep(sweep_id)
    summary = sweep.summary
    _log(f"sweep {sweep_id}: {sweep.status.value} in {wall:.1f} s ({summary.child_runs} runs for "
         f"{summary.standalone_runs} strategy x seed results)")
    return {
        "status": sweep.status.value, "error": sweep.error, "wall_s": round(wall, 2),
        "child_runs": summary.child_runs, "standalone_runs": summary.standalone_runs,
        "children": [{"seed": c.seed, "strategy": c.strategy, "status": c.status, "wall_s": c.wall_s}
                     for c in summary.children],
        "best": summary.best,
        "table": {r.strategy: {"mean": r.mean, "sd": r.sd, "seeds": [s.test_score for s in r.seeds],
                               "wall_s": r.wall_s} for r in summary.results},
        "comparisons": [c.sentence for c in summary.comparisons],
    }


def scripted_part(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    from core.config.defaults import scripted_config_dict

    _runs, sweeps = _managers(home / "scripted")
    seeds = args.seeds or [0, 1, 2]
    ray: dict[str, Any] = {}
    if args.executor == "ray":  # the instance starts once per process: timed apart from the sweep
        from core.run.ray_executor import connect

        started = time.perf_counter()
        module = connect(os.environ.get("RAY_ADDRESS") or None)
        ray = {"ray_version": module.__version__, "ray_start_s": round(time.perf_counter() - started, 2),
               "ray_cpus": module.cluster_resources().get("CPU")}
        _log(f"Ray {ray['ray_version']} ready in {ray['ray_start_s']} s ({ray['ray_cpus']} CPUs)")
    _log(f"scripted sweep: {len(FIVE)} strategies x {len(seeds)} seeds, executor {args.executor}")
    return {"strategies": FIVE, "seeds": seeds, "executor": args.executor, **ray,
            **_sweep(sweeps, scripted_config_dict("classifier", tag="bench-sweep"), FIVE, seeds, args.executor)}


def shared_part(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """The default template's three strategies as one sweep against three separate runs per seed."""
    from core.config.defaults import default_config_dict, scripted_config_dict
    from core.config.schema import parse_config

    quick = args.quick
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    doc = scripted_config_dict("support_triage", tag="bench-shared") if quick else default_config_dict()
    runs, sweeps = _managers(home / "shared")
    _log(f"shared prefixes: {SHARED} x seeds {seeds} on the {'scripted' if quick else 'embedded'} models")
    sweep = _sweep(sweeps, doc, SHARED, seeds, "local")
    separate: dict[str, list[float | None]] = {s: [] for s in SHARED}
    started = time.perf_counter()
    for seed in seeds:
        for strategy in SHARED:
            with contextlib.redirect_stdout(sys.stderr):
                run_id = runs.start(parse_config({**doc, "strategy": strategy, "seed": seed}))
                runs.wait(run_id)
            run = runs.store.get_run(run_id)
            _log(f"separate run {run_id} '{strategy}' seed {seed}: {run.status.value}, test {run.test_best_score}")
            separate[strategy].append(run.test_best_score)
    separate_wall = time.perf_counter() - started
    mismatches = [{"strategy": s, "seed": seed, "sweep": a, "separate": b}
                  for s in SHARED for seed, a, b in zip(seeds, sweep["table"][s]["seeds"], separate[s], strict=True)
                  if a != b]
    return {"lm": "scripted" if quick else "embedded", "strategies": SHARED, "seeds": seeds,
            "sweep_wall_s": sweep["wall_s"], "separate_wall_s": round(separate_wall, 2),
            "saving_ratio": round(separate_wall / sweep["wall_s"], 2) if sweep["wall_s"] else None,
            "runs": {"sweep": sweep["child_runs"], "separate": len(SHARED) * len(seeds)},
            "same_results": not mismatches, "mismatches": mismatches, "sweep": sweep,
            "separate_table": separate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: everything on the scripted LM, 1 seed shared")
    parser.add_argument("--part", choices=["all", "scripted", "shared"], default="all")
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="where the scripted sweep runs")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2; --quick's shared part: 0)")
    args = parser.parse_args()
    quiet_logging()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        home = Path(tmp)
        os.environ.setdefault("STUDIO_HOME", str(home / "studio"))
        result: dict[str, Any] = {"quick": args.quick}
        if args.part in ("all", "scripted"):
            result["scripted"] = scripted_part(args, home)
        if args.part in ("all", "shared"):
            result["shared"] = shared_part(args, home)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
