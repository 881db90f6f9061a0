"""Benchmark: what a prompt step after the weight step can do, on the saved programs of quality runs.

For each given ``p -> w -> p`` run of a ``bench/quality.py`` store, the ``p -> w`` round program (its
fine-tuned weights included) is evaluated on validation and test as it is, then with candidate demo
sets, without re-running or re-training anything:

- ``stratified``: labeled demo sets covering every label value on the fine-tuned label predictors (what
  the prompt step did before it served them as trained);
- ``upstream``: bootstrapped demos for the prompted predictors upstream of them, from training examples
  the fine-tuned program gets right (what the prompt step does now).

The last line of stdout is one JSON object: per run and candidate, the validation and test scores.

    python bench/final_prompt_step.py --runs /tmp/bench-quality-XXXX/studio.db:1 --sets 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import quiet_logging  # noqa: E402 - bench/ is on sys.path when run as a script


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _score(program: Any, examples: list, metric: Any) -> float:
    import dspy

    evaluate = dspy.Evaluate(devset=examples, metric=metric, num_threads=1, display_progress=False,
                             max_errors=len(examples) + 1)
    with contextlib.redirect_stdout(sys.stderr):
        return round(float(evaluate(program).score), 1)


def measure(db: str, run_id: int, sets: int) -> dict[str, Any]:
    import dspy

    from core.bundles.export import run_label_choices
    from core.bundles.saved import load_saved_program
    from core.lms.call_cache import CallCache
    from core.optimizers.prompt import passing_demos
    from core.optimizers.stratify import stratified_candidate
    from core.plan.prepare import prepare_run
    from core.programs import label_keys, label_predictors
    from core.run.build import make_adapter
    from core.store import Store

    store = Store(db)
    config = store.get_run(run_id).require_config()
    prepared = prepare_run(config)
    split, metric = prepared.split, prepared.metric
    weights = {a.meta.get("model"): Path(a.path) for a in store.list_artifacts(run_id, "weights")}
    paths = {a.meta.get("index"): a.path for a in store.list_artifacts(run_id, "round_program")}
    program_name = getattr(config.program, "name", None) or config.program.kind
    result: dict[str, Any] = {"db": db, "run": run_id, "program": program_name, "seed": config.seed, "candidates": []}
    with dspy.context(adapter=make_adapter(prepared.runtimes), studio_call_cache=CallCache()):
        fine_tuned = load_saved_program(config, paths[2], weights, run_label_choices(store, run_id))
        targets = label_predictors(fine_tuned, label_keys(split.train))
        upstream = [name for name, _ in fine_tuned.named_predictors() if name not in targets]
        candidates: list[tuple[str, Any]] = [("p -> w", fine_tuned)]
        for seed in range(sets):
            candidates.append((f"stratified {seed}", stratified_candidate(fine_tuned, targets, split.train,
                                                                           seed=1000 + 17 * seed + config.seed)))
        if upstream:
            pool = passing_demos(fine_tuned, upstream, split.train, metric, wanted=len(split.train), seed=config.seed)
            result["passing_train_examples"] = max(len(v) for v in pool.values())
            for seed in range(sets):
                program = fine_tuned.deepcopy()
                rng = random.Random(100 * config.seed + seed)
                for name, predictor in program.named_predictors():
                    if len(pool.get(name, [])) >= 2:
                        predictor.demos = rng.sample(pool[name], 2)
                candidates.append((f"upstream {seed}", program))
        for label, program in candidates:
            started = time.monotonic()
            row = {"candidate": label, "val": _score(program, split.val, metric),
                   "test": _score(program, split.test, metric),
                   "demos": {name: len(p.demos) for name, p in program.named_predictors()}}
            result["candidates"].append(row)
            _log(f"{result['program']} seed {config.seed} {label}: val {row['val']}, test {row['test']} "
                 f"({time.monotonic() - started:.0f} s)")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="DB:RUN_ID",
                        help="p -> w -> p runs of bench/quality.py stores (their round 2 is p -> w)")
    parser.add_argument("--sets", type=int, default=4, help="candidate demo sets of each kind per run")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args()
    quiet_logging()
    results = []
    for spec in args.runs:
        db, _, run_id = spec.rpartition(":")
        results.append(measure(db, int(run_id), args.sets))
        document = {"bench": "final_prompt_step", "sets": args.sets, "runs": results}
        if args.out:
            Path(args.out).write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
