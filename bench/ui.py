"""Does the app stay fast with a big history? Every page rendered (Streamlit AppTest) with 500 runs in the
history and runs of 1,000 examples x 8 rounds of per-example evidence in the database; then the
example matrix paged through while the process's resident memory is watched.

The history is generated directly through the store API (runs, rounds, evaluations with two LM calls
per example, training rows, round programs), not by running optimizations.

    .venv/bin/python bench/ui.py [--runs 500] [--big-runs 2] [--examples 1000] [--rounds 8] [--pages 20] [--passes 3]

Prints JSON as its last line: seconds per page (cold = first render in this process, warm = a rerun),
matrix page seconds, RSS in MB before paging and after each of ``--passes`` passes over ``--pages`` pages.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = ["program", "models", "data", "strategy", "run", "results"]
PREDICTORS = ("analyze.predict", "classify")
LABELS = ("legal", "growth", "decline", "operations")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _round(run_id: int, index: int, strategy: str, score: float):
    from core.config.strategy import last_step
    from core.store import now_iso
    from core.store.records import Round

    return Round(run_id=run_id, index=index, strategy=strategy, step_key=last_step(strategy),
                 optimizer=None if index == 0 else ("finetune" if strategy.endswith("w") else "random_search"),
                 score=score, eval_failed=False, eval_error=None, is_best=False, started_at=now_iso(),
                 finished_at=now_iso(), lm_usage={"scripted/large": {"calls": 2000, "errors": 0, "input_tokens": 300_000,
                                                                     "output_tokens": 50_000}},
                 predictor_models={p: "scripted/large" for p in PREDICTORS}, demos={p: index % 3 for p in PREDICTORS},
                 instructions={p: f"Instructions of {p}, version {index}." for p in PREDICTORS})


def _strategies(rounds: int) -> list[str]:
    from core.config.strategy import join_steps

    keys = ["p", "w"] * rounds
    return [join_steps(keys[:i]) for i in range(rounds)]


def _config(strategy: str, name: str):
    """A valid run config (scripted LMs) with ``strategy``: the store keeps typed configs only."""
    from core.config.defaults import scripted_config_dict
    from core.config.schema import parse_config

    return parse_config({**scripted_config_dict("analyze_classify"), "strategy": strategy, "name": name})


def make_history(store, runs: int) -> None:
    from core.store.records import RunOutcome, RunStatus
    from core.store.rows import round_to_row

    rows = []
    for i in range(runs):
        run_id = store.create_run(f"history {i}", _config("p -> w -> p", f"history {i}"), RunStatus.RUNNING)
        store.finish_run(run_id, RunOutcome(RunStatus.FINISHED, best_strategy="p", best_score=50.0 + i % 40,
                         baseline_score=40.0, test_baseline_score=38.0, test_best_score=45.0, flagged=False))
        rows += [round_to_row(_round(run_id, k, s, 40.0 + k)) for k, s in enumerate(_strategies(3))]
    with store._write() as db:
        db["rounds"].insert_all(rows)


def _program_state(index: int, model: str) -> dict:
    return {p: {"demos": [{"document": f"demo {d} of round {index}", "category": LABELS[d % 4]} for d in range(index % 3)],
                "signature": {"instructions": f"Read the document and answer. Round {index} says: be precise.",
                              "fields": []},
                "lm": {"model": model if p == "classify" else "scripted/large"}} for p in PREDICTORS}


def make_big_run(store, folder: Path, examples: int, rounds: int) -> int:
    """A run with ``rounds`` validation evaluations and a test one, each of ``examples`` examples."""
    from core.store.evidence import ExampleResult, LMCall, NewEvaluation, add_evaluation, add_training_rows
    from core.store.records import RunOutcome, RunStatus, TrainingRow

    strategies = _strategies(rounds)
    run_id = store.create_run("big run", _config(strategies[-1], "big"), RunStatus.RUNNING)
    system = "Your input fields are:\n1. `document` (str)\nYour output fields are: ... " * 8
    for k, strategy in enumerate(strategies + ["test"]):
        model = "scripted/small" if k < 2 else f"scripted/small:ft-{k:08d}"
        results = []
        for i in range(examples):
            gold = {"category": LABELS[i % 4]}
            predicted = LABELS[(i + k * (i % 3)) % 4]
            document = f"Example {i}: the company reported results; keyword{i % 50} appears here."
            calls = (LMCall(0, PREDICTORS[0], "scripted/large", [{"role": "system", "content": system},
                                                                  {"role": "user", "content": document}],
                            "[[ ## analysis ## ]]\nA short analysis.", 300, 20, 1.0),
                     LMCall(1, PREDICTORS[1], model, [{"role": "system", "content": system},
                                                      {"role": "user", "content": "A short analysis."}],
                            f"[[ ## category ## ]]\n{predicted}", 250, 5, 1.0))
            results.append(ExampleResult(i, {"document": document}, gold, {"analysis": "A short analysis.",
                                                                           "category": predicted},
                                         float(predicted == gold["category"]), predicted == gold["category"],
                                         calls=calls))
        split = "test" if strategy == "test" else "val"
        new = NewEvaluation(run_id, split, None if split == "test" else k, "test: best" if split == "test" else
                            (strategy or "baseline"), "best" if split == "test" else None,
                            score=100.0 * sum(r.passed for r in results) / examples)
        add_evaluation(store, new, results)
        if split == "val":
            store.add_round(_round(run_id, k, strategy, new.score))
            path = folder / f"run-{run_id}-round-{k}.json"
            path.write_text(json.dumps(_program_state(k, model)))
            store.add_artifact(run_id, "round_program", str(path), {"index": k, "strategy": strategy})
            if strategy.endswith("w"):
                rows = [TrainingRow("classify", [{"role": "system", "content": system},
                                                 {"role": "user", "content": f"analysis {i}"},
                                                 {"role": "assistant", "content": f"[[ ## category ## ]]\n{LABELS[i % 4]}"}],
                                    {"category": LABELS[i % 4]}, "self", i) for i in range(examples)]
                add_training_rows(store, run_id, k, "scripted/small", rows)
    store.mark_best(run_id, rounds - 1)
    store.finish_run(run_id, RunOutcome(RunStatus.FINISHED, best_strategy=strategies[-1], best_score=60.0, baseline_score=40.0,
                     test_baseline_score=None, test_best_score=55.0, flagged=False))
    return run_id


def render(page: str, run_id: int):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=120)
    at.query_params["run"] = str(run_id)
    started = time.perf_counter()
    at.run()
    cold = time.perf_counter() - started
    assert not at.exception, f"{page}: {at.exception}"
    warm = []
    for _ in range(3):
        started = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - started)
    return at, cold, statistics.median(warm)


def page_through(at, pages: int) -> tuple[list[float], list[float]]:
    """Move the matrix page by page; seconds per rerun and RSS after each."""
    seconds, rss = [], []
    for number in range(1, pages + 1):
        pager = next(n for n in at.number_input if n.label.startswith("Page (of") and n.key.startswith("mx_page"))
        started = time.perf_counter()
        pager.set_value(number).run()
        seconds.append(time.perf_counter() - started)
        assert not at.exception, at.exception
        rss.append(rss_mb())
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--big-runs", type=int, default=2)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    home = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    os.environ["STUDIO_HOME"] = str(home)
    from core.paths import db_path
    from core.store import Store

    started = time.perf_counter()
    store = Store(db_path())
    make_history(store, args.runs)
    big = [make_big_run(store, home, args.examples, args.rounds) for _ in range(args.big_runs)]
    generated = time.perf_counter() - started
    db_mb = sum(p.stat().st_size for p in home.glob("studio.db*")) / 1e6
    store.close()

    timings = {}
    results_at = None
    for page in PAGES:
        at, cold, warm = render(page, big[-1])
        timings[page] = {"cold_s": round(cold, 3), "warm_s": round(warm, 3)}
        if page == "results":
            results_at = at
    gc.collect()
    rss_before = rss_mb()
    # Page through the matrix ``--passes`` times. Each rerun runs on a new thread (as in a real server),
    # which opens its own SQLite connection; dead threads' connections are freed by the cycle collector,
    # so RSS is read after a collection at the end of each pass: a leak would grow pass after pass.
    seconds: list[float] = []
    rss: list[float] = []
    after_pass: list[float] = []
    for _ in range(args.passes):
        pass_seconds, pass_rss = page_through(results_at, args.pages)
        seconds += pass_seconds
        rss += pass_rss
        gc.collect()
        after_pass.append(rss_mb())
    search = next(t for t in results_at.text_input if t.label == "Search inputs, gold, outputs")
    t0 = time.perf_counter()
    search.set_value("keyword7;").run()
    search_s = time.perf_counter() - t0
    changed = next(s for s in results_at.selectbox if s.label == "Show")
    t0 = time.perf_counter()
    changed.set_value("changed").run()
    filter_s = time.perf_counter() - t0
    p95 = statistics.quantiles(seconds, n=20)[-1] if len(seconds) >= 2 else seconds[0]
    worst = max(max(t["warm_s"] for t in timings.values()), p95, search_s, filter_s)
    print(json.dumps({
        "benchmark": "ui",
        "runs": args.runs + args.big_runs,
        "big_runs": args.big_runs,
        "examples": args.examples,
        "rounds": args.rounds,
        "db_mb": round(db_mb, 1),
        "generate_s": round(generated, 1),
        "pages": timings,
        "matrix_page_s": {"median": round(statistics.median(seconds), 3), "p95": round(p95, 3),
                          "max": round(max(seconds), 3)},
        "matrix_search_s": round(search_s, 3),
        "matrix_filter_s": round(filter_s, 3),
        "matrix_reruns": len(seconds),
        "rss_mb": {"before_paging": round(rss_before, 1), "after_each_pass": [round(x, 1) for x in after_pass],
                   "max_while_paging": round(max(rss), 1)},
        "rss_growth_mb_first_to_last_pass": round(after_pass[-1] - after_pass[0], 1),
        # after the first passes the allocator and SQLite's page caches have grown to their working size
        "rss_growth_mb_second_to_last_pass": round(after_pass[-1] - after_pass[min(1, len(after_pass) - 1)], 1),
        "every_warm_render_under_1s": worst < 1.0,  # warm pages, matrix p95, search, filter
    }))


if __name__ == "__main__":
    main()
