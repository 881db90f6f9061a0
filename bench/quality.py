"""Benchmark: does BetterTogether pay off on small models? Test scores of every strategy on every task.

Tasks: every bundled sample task (the templates' default runs, embedded SmolLM2 in both roles), plus
any ``--task DATA_FILE:CONFIG_JSON`` (a run configuration whose data source becomes DATA_FILE).
Strategies: baseline, p, w, p -> w, p -> w -> p. A ``p -> w -> p`` run holds the rounds of baseline,
p and p -> w: their saved round programs are evaluated on the test split instead of re-running
them; ``w`` is its own run. Each run goes through the product's RunManager, as the Run page starts
it. Scores are on the test split, mean +- sd over the seeds (split seed and run seed). Also: wall
time per strategy (the rounds it needs plus its test evaluation), where the time went (the phases
recorded per round), the Strategy page's estimate against the measured wall time, and the targets
of issue 11. Progress goes to stderr; the last line of stdout is one JSON object.

    python bench/quality.py                       # 4 tasks x 3 seeds (about 2 h on 2 cores)
    python bench/quality.py --test 40             # the same with 40 test examples per task (docs/benchmarks.md's table)
    python bench/quality.py --quick               # CI-sized smoke run: tiny splits, 1 seed, 2 LoRA steps
    python bench/quality.py --tasks support_triage --seeds 0
    python bench/quality.py --tasks pump_status --seeds 0   # the numeric table (sensor readings -> status)
    python bench/quality.py --tasks pump_status --no-w     # p -> w -> p runs only (its rounds: 4 strategies, no w)
    python bench/quality.py --task my.csv:my_config.json
    python bench/quality.py --merge a.json b.json  # one table from runs already measured (e.g. one seed each)
    python bench/quality.py --merge a.json b.json --default-run d.json  # 5-min target judged on default_run.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import quiet_logging  # noqa: E402 - bench/ is on sys.path when run as a script

STRATEGIES = ("baseline", "p", "w", "p -> w", "p -> w -> p")
# pump_status: the numeric table (four sensor readings -> a status, one Predict module in the small role, a 50/50/50
# split), on which a review saw p -> w -> p learn nothing: measured so that a weight step that only fits text is seen
SAMPLE_TASKS = ("support_triage", "classifier", "analyze_classify", "pump_status")
QUICK_SPLIT = {"train": 8, "val": 4, "test": 6}


def _seconds(started: str | None, finished: str | None) -> float:
    if not started or not finished:
        return 0.0
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def task_documents(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Task name -> its run configuration document."""
    from core.config.defaults import default_config_dict

    docs = {name: default_config_dict(name) for name in args.tasks}
    for item in args.task:
        data, _, config = item.partition(":")
        if not config:
            raise SystemExit(f"--task {item!r}: expected DATA_FILE:CONFIG_JSON")
        doc = json.loads(Path(config).read_text(encoding="utf-8"))
        doc.setdefault("data", {})["source"] = {"kind": "file", "path": str(Path(data).resolve())}
        docs[Path(data).stem] = doc
    return docs


def sized(doc: dict[str, Any], seed: int, strategy: str, quick: bool, test: int | None = None) -> dict[str, Any]:
    """``doc`` for one seed and strategy (``--quick``: tiny split, 1 candidate, 2 LoRA steps; ``test``: that
    many test examples instead of the document's, for a finer measurement of the same method)."""
    doc = json.loads(json.dumps(doc))
    doc["data"].setdefault("split", {})["seed"] = seed
    if test:
        doc["data"]["split"]["test"] = test
    doc["seed"] = seed
    doc["strategy"] = strategy
    if quick:
        doc["data"]["split"] = {**QUICK_SPLIT, "seed": seed}
        for spec in doc.get("optimizers", {}).values():
            settings = spec.setdefault("settings", {})
            if spec["type"] == "random_search":
                settings["num_candidate_programs"] = 1
            if spec["type"] == "finetune":
                settings.update({"epochs": 1, "max_steps": 2})
    return doc


def run_config(manager: Any, doc: dict[str, Any]) -> int:
    from core.config.schema import parse_config

    run_id = manager.start(parse_config(doc))
    seen = 0
    with contextlib.redirect_stdout(sys.stderr):
        while not manager.wait(run_id, timeout=2.0):
            for event in manager.store.list_events(run_id, since_id=seen):
                seen = event.id
                if event.kind in ("round", "traces", "train_start", "finetuned", "error", "cache"):
                    _log(f"  run {run_id} {event.kind}: {event.message}")
    return run_id


def test_scores(store: Any, run_id: int, indices: list[int]) -> tuple[dict[int, float | None], dict[int, float]]:
    """Test score and evaluation seconds of the saved round programs ``indices`` of a run (one call cache
    for them all, as within a run: an unchanged upstream predictor is asked once per example)."""
    import dspy

    from core.bundles.export import run_label_choices
    from core.bundles.saved import load_saved_program
    from core.lms.call_cache import CallCache
    from core.plan.prepare import prepare_run
    from core.run.build import make_adapter

    run = store.get_run(run_id)
    config = run.require_config()
    prepared = prepare_run(config)
    weights = {a.meta.get("model"): Path(a.path) for a in store.list_artifacts(run_id, "weights")}
    paths = {a.meta.get("index"): a.path for a in store.list_artifacts(run_id, "round_program")}
    scores: dict[int, float | None] = {}
    seconds: dict[int, float] = {}
    with dspy.context(adapter=make_adapter(prepared.runtimes), studio_call_cache=CallCache()):
        for index in indices:
            started = time.monotonic()
            if index not in paths:
                scores[index] = None
                continue
            program = load_saved_program(config, paths[index], weights, run_label_choices(store, run_id))
            evaluate = dspy.Evaluate(devset=prepared.split.test, metric=prepared.metric, num_threads=1,
                                     display_progress=False, max_errors=len(prepared.split.test) + 1)
            with contextlib.redirect_stdout(sys.stderr):
                scores[index] = float(evaluate(program).score)
            seconds[index] = time.monotonic() - started
    return scores, seconds


def round_phases(rounds: list[Any]) -> dict[str, float]:
    total: dict[str, float] = {}
    for r in rounds:
        for name, seconds in r.details.phases.items():
            total[name] = total.get(name, 0.0) + seconds
    return total


def earlier_w_runs(paths: list[str]) -> dict[tuple[str, int, Any], dict[str, Any]]:
    """(task, seed, test examples) -> the ``w`` measurement of that seed in earlier ``--out`` files, with
    the file it came from. A ``w`` run has no prompt step, so a change to prompt steps leaves it as it was."""
    found: dict[tuple[str, int, Any], dict[str, Any]] = {}
    for path in paths:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        for run in document.get("runs", []):
            if run.get("scores", {}).get("w") is None:
                continue
            key = (run["task"], run["seed"], document.get("test_examples"))
            found[key] = {"score": run["scores"]["w"], "phases": run["phases"].get("w", {}),
                          "seconds": run["seconds"].get("w"), "from": str(path)}
    return found


def measure_task(manager: Any, name: str, doc: dict[str, Any], seed: int, quick: bool,
                 test: int | None = None, earlier_w: dict[str, Any] | None = None,
                 run_w: bool = True) -> dict[str, Any]:
    """One seed of one task: a p -> w -> p run (4 strategies) and a w run (or ``earlier_w``, the same
    seed's ``w`` measured before, see ``--reuse-w``; none with ``run_w`` False, see ``--no-w``)."""
    from core.config.schema import parse_config
    from core.plan.estimate import estimate_from_source

    store = manager.store
    result: dict[str, Any] = {"task": name, "seed": seed, "scores": {}, "seconds": {}, "phases": {}}
    main_doc = sized(doc, seed, "p -> w -> p", quick, test)
    started = time.monotonic()
    run_id = run_config(manager, main_doc)
    wall = time.monotonic() - started
    run = store.get_run(run_id)
    rounds = store.list_rounds(run_id)
    _log(f"{name} seed {seed}: p -> w -> p run {run_id} {run.status.value} in {wall:.0f} s ({run.error or 'ok'})")
    scores, test_seconds = test_scores(store, run_id, [1, 2, 3])
    result["scores"]["baseline"] = run.test_baseline_score
    result["phases"]["baseline"] = {"baseline evaluation": 0.0, "test": 0.0}
    cumulative: dict[str, float] = {}
    for r in rounds:
        for phase, seconds in r.details.phases.items():
            cumulative[phase] = cumulative.get(phase, 0.0) + seconds
        label = r.strategy or "baseline"
        if label != "baseline":
            result["scores"][label] = scores.get(r.index)
        phases = {**{k: round(v, 1) for k, v in cumulative.items()}, "test": round(test_seconds.get(r.index, 0.0), 1)}
        result["phases"][label] = phases
        result["seconds"][label] = round(sum(phases.values()), 1)
    result["default_run"] = {
        "run_id": run_id, "status": run.status.value, "wall_seconds": round(wall, 1),
        "run_seconds": round(_seconds(run.started_at, run.finished_at), 1),
        "val": {r.strategy or "baseline": r.score for r in rounds}, "test_best": run.test_best_score,
        "best_strategy": run.best_strategy,
        "traces": [r.details.traces.to_json() for r in rounds if r.details.traces is not None],
        "cache": next((e.data for e in store.list_events(run_id, kinds=["cache"])), None),
    }
    predicted = estimate_from_source(parse_config(main_doc))
    run_seconds = result["default_run"]["run_seconds"]
    result["estimate"] = {"predicted_seconds": round(predicted.seconds, 1), "measured_seconds": run_seconds,
                          "error_pct": round(100 * (predicted.seconds - run_seconds) / run_seconds, 1)
                          if run_seconds else None}
    if earlier_w is not None:
        result["scores"]["w"] = earlier_w["score"]
        result["phases"]["w"] = earlier_w["phases"]
        result["seconds"]["w"] = earlier_w["seconds"]
        result["w_reused_from"] = earlier_w["from"]
        _log(f"{name} seed {seed}: w reused from {earlier_w['from']}; test scores {result['scores']}")
        return result
    if not run_w:
        _log(f"{name} seed {seed}: no w run (--no-w); test scores {result['scores']}")
        return result
    w_doc = sized(doc, seed, "w", quick, test)
    w_id = run_config(manager, w_doc)
    w_run = store.get_run(w_id)
    w_rounds = store.list_rounds(w_id)
    w_scores, w_seconds = test_scores(store, w_id, [1])
    result["scores"]["w"] = w_scores.get(1)
    w_phases = {**{k: round(v, 1) for k, v in round_phases(w_rounds).items()}, "test": round(w_seconds.get(1, 0.0), 1)}
    result["phases"]["w"] = w_phases
    result["seconds"]["w"] = round(sum(w_phases.values()), 1)
    _log(f"{name} seed {seed}: w run {w_id} {w_run.status.value}; test scores {result['scores']}")
    return result


def summarize(results: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for task in tasks:
        mine = [r for r in results if r["task"] == task]
        if not mine:
            continue
        row: dict[str, Any] = {}
        for strategy in STRATEGIES:
            values = [r["scores"].get(strategy) for r in mine if r["scores"].get(strategy) is not None]
            seconds = [r["seconds"].get(strategy) for r in mine if r["seconds"].get(strategy) is not None]
            row[strategy] = {
                "mean": round(statistics.mean(values), 1) if values else None,
                "sd": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0 if values else None,
                "seeds": values,
                "seconds": round(statistics.mean(seconds), 1) if seconds else None,
            }
        row["estimate_error_pct"] = [r["estimate"]["error_pct"] for r in mine]
        table[task] = row
    return table


def targets(table: dict[str, Any], results: list[dict[str, Any]],
            default_runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Issue 11's targets. The 5-minute target is judged on ``default_runs`` (``bench/default_run.py``
    outputs: the default run as the Run page starts it, timed alone) when given, else on this benchmark's
    support-triage ``p -> w -> p`` runs (40 test examples, often timed side by side with other seeds)."""
    def mean(task: str, strategy: str) -> float | None:
        return table[task][strategy]["mean"]

    tasks = [t for t in table if all(mean(t, s) is not None for s in STRATEGIES)]
    # the gain needs only the p -> w -> p run's rounds (a --no-w measurement has them); beating p and w needs w
    gained = [t for t in table if mean(t, "baseline") is not None and mean(t, "p -> w -> p") is not None]
    gain = {t: round(mean(t, "p -> w -> p") - mean(t, "baseline"), 1) for t in gained}
    beats_parts = {t: mean(t, "p -> w -> p") > mean(t, "p") and mean(t, "p -> w -> p") > mean(t, "w") for t in tasks}
    if default_runs:
        default_seconds = [d["wall_seconds"] for d in default_runs]
        source = "bench/default_run.py"
    else:
        default_seconds = [r["default_run"]["run_seconds"] for r in results if r["task"] == "support_triage"]
        source = "the support-triage p -> w -> p runs of this benchmark"
    return {
        "tasks_scored": tasks,
        "pwp_minus_baseline": gain,
        "pwp_beats_baseline_by_30_on_2_tasks": sum(g >= 30 for g in gain.values()) >= 2,
        "pwp_never_below_baseline": all(g >= 0 for g in gain.values()) if gain else None,
        "pwp_beats_p_and_w": beats_parts,
        "pwp_beats_p_and_w_on_2_tasks": sum(beats_parts.values()) >= 2,
        "default_run_seconds": default_seconds,
        "default_run_measured_by": source,
        "default_run_estimate_error_pct": [d.get("estimate_error_pct") for d in default_runs or []],
        "default_run_within_300s": bool(default_seconds) and max(default_seconds) <= 300,
    }


def default_run_measurements(paths: list[str]) -> list[dict[str, Any]]:
    """The ``bench/default_run.py`` outputs in ``paths`` (files holding its JSON as their last line), each
    checked to be the default run itself: finished, full budget, call cache on, no setting overridden."""
    runs = []
    for path in paths:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            doc = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            doc = {}
        problems = [why for bad, why in (
            (doc.get("bench") != "default_run", "not a bench/default_run.py output"),
            (doc.get("status") != "finished", f"the run did not finish ({doc.get('status')})"),
            (bool(doc.get("quick")), "a --quick run"),
            (doc.get("call_cache") is False, "run with --no-call-cache"),
            (bool(doc.get("overrides")), f"settings overridden: {doc.get('overrides')}"),
        ) if bad]
        if problems:
            raise SystemExit(f"--default-run {path}: {problems[0]}; expected the JSON of a plain "
                             "`python bench/default_run.py`")
        if doc.get("estimate_seconds") is None:  # an output from before default_run.py printed the estimate
            from core.config.defaults import default_config
            from core.plan.estimate import estimate_from_source

            config = default_config(doc["template"]) if doc.get("template") else default_config()
            doc["estimate_seconds"] = round(estimate_from_source(config).seconds, 1)
            doc["estimate_error_pct"] = round(100 * (doc["estimate_seconds"] - doc["wall_seconds"])
                                              / doc["wall_seconds"], 1)
        runs.append(doc)
    return runs


def merge(paths: list[str], out: str | None, default_runs: list[dict[str, Any]] | None = None) -> int:
    """One table from the runs of several ``--out`` files (the same tasks, different seeds). A task and seed
    measured in several files is taken from the last of them (a task re-measured after a change)."""
    documents = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    latest = {(run["task"], run["seed"]): run for d in documents for run in d.get("runs", [])}
    results = [run for d in documents for run in d.get("runs", []) if latest[(run["task"], run["seed"])] is run]
    tasks = list(dict.fromkeys(r["task"] for r in results))
    table = summarize(results, tasks)
    merged = {"bench": "quality", "quick": any(d.get("quick") for d in documents),
              "seeds": sorted({r["seed"] for r in results}),
              "test_examples": sorted({d.get("test_examples") for d in documents}, key=str),
              "merged_from": paths, "table": table, "targets": targets(table, results, default_runs),
              "default_runs": default_runs or [], "runs": results,
              "wall_seconds": round(sum(d.get("wall_seconds") or 0 for d in documents), 1)}
    if out:
        Path(out).write_text(json.dumps(merged, indent=1), encoding="utf-8")
    print(json.dumps(merged))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run (tiny splits, 1 seed)")
    parser.add_argument("--tasks", nargs="*", default=list(SAMPLE_TASKS), help="sample tasks (template keys)")
    parser.add_argument("--task", action="append", default=[], help="DATA_FILE:CONFIG_JSON, repeatable")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="default: 0 1 2 (--quick: 0)")
    parser.add_argument("--test", type=int, default=None,
                        help="test examples per task (default: the task's own split; docs/benchmarks.md uses 40)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="summarize the runs of earlier --out files (seeds run in separate processes) instead; "
                             "a task and seed in several files: the last file's")
    parser.add_argument("--default-run", nargs="+", default=None, metavar="JSON",
                        help="outputs of bench/default_run.py (timed alone) to judge the 5-minute target on")
    parser.add_argument("--reuse-w", nargs="+", default=[], metavar="JSON",
                        help="take each task and seed's w score from these earlier --out files instead of running w "
                             "again (w has no prompt step: for a change to prompt steps)")
    parser.add_argument("--no-w", action="store_true",
                        help="only the p -> w -> p run of each task and seed (baseline, p, p -> w, p -> w -> p: its "
                             "rounds), no w run: the w column stays empty")
    parser.add_argument("--out", default=None, help="also write the JSON (and partial results) to this file")
    args = parser.parse_args()
    default_runs = default_run_measurements(args.default_run) if args.default_run else None
    if args.merge:
        return merge(args.merge, args.out, default_runs)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    quiet_logging()
    os.environ.setdefault("STUDIO_HOME", tempfile.mkdtemp(prefix="bench-quality-"))

    from core.paths import db_path
    from core.run import RunManager
    from core.store import Store

    manager = RunManager(Store(db_path()))
    docs = task_documents(args)
    reuse = earlier_w_runs(args.reuse_w)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for seed in seeds:  # seed-major: every task gets a first seed before any gets a second
        for name, doc in docs.items():
            test = None if args.quick else args.test
            results.append(measure_task(manager, name, doc, seed, args.quick, test, reuse.get((name, seed, args.test)),
                                        run_w=not args.no_w))
            table = summarize(results, list(docs))
            partial = {"bench": "quality", "quick": args.quick, "seeds": seeds, "test_examples": args.test,
                       "table": table,
                       "targets": targets(table, results, default_runs), "default_runs": default_runs or [],
                       "runs": results,
                       "wall_seconds": round(time.monotonic() - started, 1)}
            if args.out:
                Path(args.out).write_text(json.dumps(partial, indent=1), encoding="utf-8")
    print(json.dumps(partial))
    return 0


if __name__ == "__main__":
    sys.exit(main())
