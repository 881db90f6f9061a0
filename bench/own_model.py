"""Benchmark: a model folder brought as a ``local`` LM against the same model shipped as ``embedded``.

The SmolLM2-135M-Instruct weights the Studio already holds as a Hugging Face folder (the shipped GGUF,
dequantized once for fine-tuning: ``core.lms.lora.ensure_hf_cache``) are given to the default run's
configuration as ``{"kind": "local", "path": <that folder>}`` for both roles, the way a user brings their own
folder; the other variant is the default configuration itself (``embedded``, the shipped GGUF). Each runs
``p -> w`` on the default run's data, split and budgets (one single-strategy sweep per variant over seeds 0, 1
and 2, so the strategy's test score is measured as sweeps measure it), through the product's own
managers, and reports:

* ``calls_per_min``: LM calls per minute of the baseline evaluation (the same examples and prompts both ways);
* ``s_per_step``: seconds per LoRA step of the weight step (the fine-tune's ``meta.json``);
* ``peak_rss_mb``: the worker's peak RSS through the weight step (``meta.json``);
* ``test``: the test score of ``p -> w`` (the score after the weight step), and the baseline's, as the mean of
  the seeds (one seed's 20 test examples move by 5 points an answer, and the two variants' prompt steps bootstrap
  their demos from differently quantized models, so single seeds differ by more than the bound);
* ``convert_s``: the local variant's one-time conversion (llama.cpp's ``convert_hf_to_gguf.py`` and quantize),
  timed before the run (the run then finds it cached by content hash).

The bound (issue 25): the local path within 10 % of the embedded one on each measure (``within_10pct``).

    python bench/own_model.py           # the default run's data, p -> w, both variants, 3 seeds (~30 min on 2 cores)
    python bench/own_model.py --quick   # smoke budget (3/1/1 examples, two LoRA steps): the path, in ~2 min

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

STRATEGY = "p -> w"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _seed_measures(store: Any, seed: Any) -> dict[str, Any]:
    """The measures of one seed's run (a child of the sweep)."""
    run = store.get_run(seed.run_id)
    rounds = store.list_rounds(seed.run_id)
    baseline = next((r for r in rounds if r.index == 0), None)
    calls = sum(int(u.get("calls") or 0) for u in baseline.lm_usage.values()) if baseline else 0
    seconds = baseline.details.phases.get("baseline evaluation") if baseline else None
    if not seconds and baseline is not None:
        seconds = sum(baseline.details.phases.values())
    train: dict[str, Any] = {}
    for artifact in store.list_artifacts(seed.run_id, "weights"):
        meta = Path(artifact.path) / "meta.json"
        if meta.is_file():
            train = json.loads(meta.read_text(encoding="utf-8")).get("train") or {}
    return {
        "seed": seed.seed, "status": run.status.value, "error": run.error or seed.error,
        "calls_per_min": round(60 * calls / seconds, 1) if calls and seconds else None,
        "baseline_calls": calls, "baseline_eval_s": round(seconds, 1) if seconds else None,
        "s_per_step": train.get("seconds_per_step"), "steps": train.get("steps"),
        "peak_rss_mb": train.get("peak_rss_mb"), "device": (train.get("device") or {}).get("describe"),
        "test": seed.test_score, "test_baseline": run.test_baseline_score, "val": seed.val_score,
    }


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return round(sum(numbers) / len(numbers), 3) if numbers else None


def _variant(doc: dict[str, Any], home: Path, label: str, seeds: list[int]) -> dict[str, Any]:
    """One single-strategy sweep of ``doc`` over ``seeds``: the measures of the module docstring, per seed and as
    means (peak RSS: the largest)."""
    from core.config.schema import parse_config
    from core.run import RunManager
    from core.run.sweep import SweepManager
    from core.store import Store

    runs = RunManager(Store(home / f"{label}.db"))
    sweeps = SweepManager(runs)
    doc = {**doc, "sweep": {"strategies": [STRATEGY], "seeds": seeds}, "executor": {"kind": "local"}}
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # DSPy prints progress
        sweep_id = sweeps.start(parse_config(doc))
        sweeps.wait(sweep_id)
    wall = time.perf_counter() - started
    summary = sweeps.store.get_sweep(sweep_id).summary
    per_seed = [_seed_measures(runs.store, seed) for seed in summary.results[0].seeds]
    result = {
        "wall_s": round(wall, 1), "status": sorted({m["status"] for m in per_seed}),
        "errors": [m["error"] for m in per_seed if m["error"]],
        "calls_per_min": _mean([m["calls_per_min"] for m in per_seed]),
        "s_per_step": _mean([m["s_per_step"] for m in per_seed]),
        "peak_rss_mb": max((m["peak_rss_mb"] for m in per_seed if m["peak_rss_mb"]), default=None),
        "test": _mean([m["test"] for m in per_seed]), "test_baseline": _mean([m["test_baseline"] for m in per_seed]),
        "device": per_seed[0]["device"] if per_seed else None, "seeds": per_seed,
    }
    _log(f"{label}: {json.dumps(result)}")
    return result


def _within(local: float | None, embedded: float | None, higher_is_better: bool) -> bool | None:
    if local is None or embedded is None:
        return None
    if local == embedded:
        return True
    if embedded == 0:
        return higher_is_better
    ratio = local / embedded
    return ratio >= 0.9 if higher_is_better else ratio <= 1.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke budget: 3/1/1 examples, two LoRA steps")
    parser.add_argument("--quant", default=None, help="the local model's GGUF type (default: the local kind's own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of each variant's sweep (default 0 1 2; --quick: 0)")
    args = parser.parse_args()
    quiet_logging()
    from core.config.defaults import default_config_dict, with_smoke_budget
    from core.lms.lora import ensure_hf_cache
    from core.paths import model_cache_dir

    # the runs' records in a temporary home; the model cache stays the user's (the dequantized SmolLM2 folder and
    # the local model's GGUF are made once, as a user's would be)
    os.environ.setdefault("STUDIO_MODEL_CACHE", str(model_cache_dir()))
    with tempfile.TemporaryDirectory(prefix="bench-own-model-") as tmp:
        home = Path(tmp)
        os.environ.setdefault("STUDIO_HOME", str(home / "studio"))
        folder = ensure_hf_cache("smollm2-135m")
        embedded = default_config_dict()
        if args.quick:
            with_smoke_budget(embedded, train=3, val=1, test=1)
        local_spec: dict[str, Any] = {"kind": "local", "path": str(folder)}
        if args.quant:
            local_spec["quant"] = args.quant
        local = json.loads(json.dumps(embedded))
        local["lms"] = {name: dict(local_spec) for name in local["lms"]}

        from core.lms.local import gguf_target, inspect_local, local_gguf, register_local

        started = time.perf_counter()
        model = inspect_local(folder, **({"quant": args.quant} if args.quant else {}))
        cached = gguf_target(model).is_file()
        gguf = local_gguf(register_local(model))
        convert_s = round(time.perf_counter() - started, 1)
        gguf_info = {"file": str(gguf), "mb": round(gguf.stat().st_size / 1e6, 1), "was_cached": cached}
        _log(f"local model {model.key}: {gguf_info} in {convert_s} s")

        seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        results = {"embedded": _variant(embedded, home, "embedded", seeds),
                   "local": _variant(local, home, "local", seeds)}
    e, loc = results["embedded"], results["local"]
    within = {
        "calls_per_min": _within(loc["calls_per_min"], e["calls_per_min"], True),
        "s_per_step": _within(loc["s_per_step"], e["s_per_step"], False),
        "peak_rss_mb": _within(loc["peak_rss_mb"], e["peak_rss_mb"], False),
        "test": _within(loc["test"], e["test"], True),
    }
    print(json.dumps({"bench": "own_model", "quick": args.quick, "strategy": STRATEGY, "seeds": seeds,
                      "model": "SmolLM2-135M-Instruct",
                      "local_gguf": gguf_info,
                      "convert_s": convert_s, **results, "within_10pct": within,
                      "ok": all(v is True for v in within.values())}))


if __name__ == "__main__":
    main()
