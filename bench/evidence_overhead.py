"""How much per-example evidence slows a run: ``--rounds`` back-to-back evaluations of 1,000 examples on
the scripted LM (as a run evaluates each round), with and without the ``EvidenceCollector`` (capture in
Evaluate's threads, one batched write per evaluation on the writer thread, and the final wait until
everything is written, as at the end of a run).

The scripted LM answers in well under a millisecond, so this is the worst case: with a real LM the same
absolute overhead is a far smaller fraction. Runs alternate (without, with); the least disturbed
(minimum) of each is compared, as is the median ratio of back-to-back pairs (which share the machine's
load at that moment); the writer's own seconds per evaluation are reported too.

    .venv/bin/python bench/evidence_overhead.py [--examples 1000] [--rounds 3] [--repeats 7] [--threads 2]

Prints JSON as its last line: seconds without / with, overhead %, writer seconds, rows written.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

from core.config.defaults import scripted_config_dict  # noqa: E402
from core.config.schema import parse_config  # noqa: E402
from core.evidence.capture import CallbackTee, EvidenceCollector, UsageTap, evidence_scope  # noqa: E402
from core.plan.prepare import prepare_run  # noqa: E402
from core.run.build import make_adapter  # noqa: E402
from core.run.observer import RunObserver  # noqa: E402
from core.store import Store  # noqa: E402
from core.store.records import RunStatus  # noqa: E402


def examples(prepared, n: int) -> list[dspy.Example]:
    """``n`` distinct examples made from the sample's rows (a number appended to each document)."""
    pool = [*prepared.split.train, *prepared.split.val, *prepared.split.test]
    out = []
    for i in range(n):
        ex = pool[i % len(pool)]
        data = dict(ex.items())
        data["document"] = f"{data['document']} (copy {i})"
        out.append(dspy.Example(**data).with_inputs(*ex.inputs().keys()))
    return out


def run(prepared, devset, rounds: int, threads: int, store: Store | None,
        run_id: int | None) -> tuple[float, float, list[float]]:
    """(wall, CPU) seconds for ``rounds`` evaluations of ``devset``, evidence written (when a store is given),
    and the writer's seconds per evaluation."""
    observer = RunObserver(threading.Event(), prepared.runtimes)
    collector = EvidenceCollector(store, run_id) if store is not None else None
    callbacks = [CallbackTee(observer, collector) if collector else observer]
    tracker = UsageTap(observer, collector) if collector else observer
    evaluate = dspy.Evaluate(devset=devset, metric=prepared.metric, num_threads=threads, display_progress=False,
                             max_errors=len(devset) + 1, provide_traceback=False)
    started, cpu = time.perf_counter(), time.process_time()
    with dspy.context(lm=prepared.context_lm, adapter=make_adapter(prepared.runtimes), callbacks=callbacks,
                      usage_tracker=tracker):
        for index in range(rounds):
            if collector is not None:
                collector.round_index = index
            with evidence_scope(collector, "val", f"round {index}", prepared.program, devset) as scope:
                scope.result = evaluate(prepared.program)
                scope.score = float(scope.result.score)
    if collector is not None:
        collector.flush()
    return time.perf_counter() - started, time.process_time() - cpu, collector.write_seconds if collector else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    prepared = prepare_run(parse_config(scripted_config_dict("analyze_classify")))
    devset = examples(prepared, args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        run_id = store.create_run("bench", prepared.config, RunStatus.RUNNING)
        run(prepared, devset[:50], 1, args.threads, store, run_id)  # warm up both paths
        run(prepared, devset[:50], 1, args.threads, None, None)
        without, with_ = [], []
        for i in range(args.repeats):  # pairs, in alternating order, so a pair shares the machine's load
            first_with = i % 2 == 1
            if first_with:
                with_.append(run(prepared, devset, args.rounds, args.threads, store, run_id))
            without.append(run(prepared, devset, args.rounds, args.threads, None, None))
            if not first_with:
                with_.append(run(prepared, devset, args.rounds, args.threads, store, run_id))
        ratios = [w[0] / b[0] for w, b in zip(with_, without, strict=True)]
        results = store.db.execute("select count(*) from example_results").fetchone()[0]
        calls = store.db.execute("select count(*) from lm_calls").fetchone()[0]
        db_mb = sum(p.stat().st_size for p in Path(tmp).glob("bench.db*")) / 1e6
    # The machine is shared: wall times carry other processes' load. The minimum of the repeats is the
    # least disturbed run (likewise for CPU seconds, which still vary with the other processes' load).
    base, evidence = min(w for w, _, _ in without), min(w for w, _, _ in with_)
    base_cpu, evidence_cpu = min(c for _, c, _ in without), min(c for _, c, _ in with_)
    writes = [s for _, _, w in with_ for s in w]
    print(json.dumps({
        "benchmark": "evidence_overhead",
        "examples": args.examples,
        "rounds": args.rounds,
        "threads": args.threads,
        "repeats": args.repeats,
        "seconds_without": round(base, 3),
        "seconds_with": round(evidence, 3),
        "overhead_pct": round(100 * (evidence - base) / base, 2),
        "paired_overhead_pct_median": round(100 * (statistics.median(ratios) - 1), 2),
        "cpu_seconds_without": round(base_cpu, 3),
        "cpu_seconds_with": round(evidence_cpu, 3),
        "cpu_overhead_pct": round(100 * (evidence_cpu - base_cpu) / base_cpu, 2),
        "runs_without": [round(w, 3) for w, _, _ in without],
        "runs_with": [round(w, 3) for w, _, _ in with_],
        # the writer's work, measured directly (it overlaps the next round's evaluation in a run)
        "write_s_per_evaluation": round(statistics.median(writes), 3),
        "write_pct_of_evaluation": round(100 * statistics.median(writes) / (base / args.rounds), 2),
        "example_rows": results,
        "lm_call_rows": calls,
        "db_mb": round(db_mb, 1),
        "within_5_pct": (evidence - base) / base <= 0.05 or statistics.median(ratios) <= 1.05,
    }))


if __name__ == "__main__":
    main()
