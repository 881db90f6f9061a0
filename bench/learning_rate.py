"""Benchmark: the weight step's learning rate, the default against alternatives, with the budget chosen on held-out
rows. For each task, learning rate and seed, one ``w`` run of the task's default configuration (the weight step
alone, on gold rows for label predictors) through the product's RunManager; the fine-tuned program is evaluated on
the test split (whether or not the run kept it as its best). Also: the checkpoint the weight step kept, why its
training ended, and its training seconds. Progress goes to stderr; the last line of stdout is one JSON object.

    python bench/learning_rate.py                                  # every sample task, lr 1e-3 3e-3 1e-2, seed 0
    python bench/learning_rate.py --tasks pump_status --lrs 3e-3 1e-2 --seeds 0 1 2
    python bench/learning_rate.py --quick                          # CI-sized smoke run (tiny split, 2 LoRA steps)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import quiet_logging  # noqa: E402 - bench/ is on sys.path when run as a script
from quality import SAMPLE_TASKS, run_config, sized, test_scores  # noqa: E402

DEFAULT_LRS = (1e-3, 3e-3, 1e-2)


def measure(manager: Any, task: str, doc: dict[str, Any], lr: float, seed: int, quick: bool) -> dict[str, Any]:
    """One ``w`` run of ``task`` at learning rate ``lr``: test score of the fine-tuned program and its training."""
    doc = sized(doc, seed, "w", quick)
    doc["optimizers"]["w"].setdefault("settings", {})["learning_rate"] = lr
    started = time.monotonic()
    run_id = run_config(manager, doc)
    wall = time.monotonic() - started
    store = manager.store
    run = store.get_run(run_id)
    rounds = store.list_rounds(run_id)
    w_round = next((r for r in rounds if r.strategy == "w"), None)
    base_round = next((r for r in rounds if not r.strategy), None)
    indices = [r.index for r in (base_round, w_round) if r is not None]
    scores, _ = test_scores(store, run_id, indices) if run.status.value == "finished" else ({}, {})
    scored = [e.data for e in store.list_events(run_id, kinds=["checkpoint"])]
    chosen = next((d for d in reversed(scored) if "chosen_step" in d), {})
    checkpoints = [{k: d[k] for k in ("step", "val_loss", "val_exact")} for d in scored if "val_loss" in d]
    steps = [e.data for e in store.list_events(run_id, kinds=["train"]) if "loss" in e.data]
    return {
        "task": task, "learning_rate": lr, "seed": seed, "status": run.status.value, "error": run.error,
        "wall_seconds": round(wall, 1),
        "val": {"baseline": base_round.score if base_round else None, "w": w_round.score if w_round else None},
        "test": {"baseline": scores.get(base_round.index) if base_round else None,
                 "w": scores.get(w_round.index) if w_round else None},
        "trained_steps": len(steps), "total_steps": steps[-1]["total"] if steps else None,
        "chosen_step": chosen.get("chosen_step"), "stopped": chosen.get("stopped"), "held_out": chosen.get("held_out"),
        "checkpoints": checkpoints,
        "training_seconds": (w_round.details.to_json().get("phases") or {}).get("training") if w_round else None,
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and learning rate: test score of ``w`` (mean +- sd over seeds), its gain over the baseline, steps."""
    table: dict[str, Any] = {}
    for r in results:
        row = table.setdefault(r["task"], {}).setdefault(f"{r['learning_rate']:g}", {"test_w": [], "gain": [],
                                                                                    "trained_steps": []})
        if r["test"]["w"] is not None:
            row["test_w"].append(r["test"]["w"])
            if r["test"]["baseline"] is not None:
                row["gain"].append(r["test"]["w"] - r["test"]["baseline"])
        row["trained_steps"].append(r["trained_steps"])
    out: dict[str, Any] = {}
    for task, rows in table.items():
        out[task] = {}
        for lr, row in rows.items():
            out[task][lr] = {k: {"mean": round(statistics.fmean(v), 1) if v else None,
                                 "sd": round(statistics.stdev(v), 1) if len(v) > 1 else 0.0, "n": len(v)}
                             for k, v in row.items()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=list(SAMPLE_TASKS))
    parser.add_argument("--lrs", nargs="*", type=float, default=list(DEFAULT_LRS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--quick", action="store_true", help="tiny split, 2 LoRA steps (a smoke test of the path)")
    parser.add_argument("--out", default=None, help="also write the JSON (partial results after every run) here")
    args = parser.parse_args()
    quiet_logging()
    os.environ.setdefault("STUDIO_HOME", tempfile.mkdtemp(prefix="bench-lr-"))

    from core.config.defaults import default_config_dict
    from core.paths import db_path
    from core.run import RunManager
    from core.store import Store

    manager = RunManager(Store(db_path()))
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    out: dict[str, Any] = {}
    for task in args.tasks:
        doc = default_config_dict(task)
        default_lr = doc["optimizers"]["w"]["settings"].get("learning_rate")
        for seed in args.seeds:
            for lr in args.lrs:
                results.append(measure(manager, task, doc, lr, seed, args.quick))
                out = {"bench": "learning_rate", "quick": args.quick, "default_learning_rate": default_lr,
                       "learning_rates": args.lrs, "seeds": args.seeds, "table": summarize(results),
                       "runs": results, "wall_seconds": round(time.monotonic() - started, 1)}
                if args.out:
                    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
