"""bench/vs_dspy.py --quick: the Studio's default run and DSPy's own ``dspy.BetterTogether`` on the scripted test LM,
each in its own child process, and the JSON the full benchmark writes; and how a failed stock step is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config.defaults import default_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import vs_dspy  # noqa: E402


@pytest.mark.time_limit(60)
def test_quick_runs_both_arms_in_child_processes_and_summarizes_them(tmp_path: Path) -> None:
    written = ROOT / "bench" / "results" / "vs_dspy.json"
    before = written.stat().st_mtime_ns if written.is_file() else None
    out = subprocess.run([sys.executable, "bench/vs_dspy.py", "--quick", "--seeds", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=50,
                         env={**os.environ, "STUDIO_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["bench"], result["quick"], result["seeds"]) == ("vs_dspy", True, [0])
    assert (result["template"], result["strategy"]) == ("support_triage", "p -> w -> p")
    assert result["predictors"] == {"extract": {"lm": "large", "role": "large"},
                                    "classify": {"lm": "small", "role": "small"}}
    assert result["machine"]["cores"] and result["machine"]["dspy"] == "3.4.1"
    (seed,) = result["runs"]
    assert seed["seed"] == 0 and seed["order"] == ["studio", "stock"]
    for arm in ("studio", "stock"):
        run = seed[arm]
        assert run["arm"] == arm and run["exit_code"] == 0
        assert run["wall_s"] > 0 and run["peak_rss_mb"] > 50  # a child that imported DSPy
        # ran, or recorded DSPy's failure as its result
        assert run["failed"] is False or {"error", "stage"} <= set(run), run
    studio, stock = seed["studio"], seed["stock"]
    assert studio["failed"] is False  # the scripted LM runs the default run to the end
    assert 0 <= studio["test"] <= 100 and studio["test_baseline"] is not None
    assert list(studio["val_scores"]) == ["baseline", "p", "p -> w", "p -> w -> p"]
    # DSPy's own optimizers, with the default run's settings mapped onto their arguments
    p, w = stock["dspy"]["optimizers"]["p"], stock["dspy"]["optimizers"]["w"]
    defaults = default_config().optimizers
    p_set, w_set = defaults["p"].settings, defaults["w"].settings
    assert (p["optimizer"], p["max_bootstrapped_demos"], p["max_labeled_demos"], p["num_candidate_programs"]) == (
        "BootstrapFewShotWithRandomSearch", p_set.max_bootstrapped_demos, p_set.max_labeled_demos,
        p_set.num_candidate_programs)
    assert w["optimizer"] == "BootstrapFinetune" and w["exclude_demos"] is w_set.exclude_demos
    assert w["train_kwargs"] == {**w_set.train_kwargs(), "seed": 0, "output_dir": w["train_kwargs"]["output_dir"]}
    assert w["unmapped"]["trace_source"] == "auto" and p["unmapped"]["stratify"] is True
    assert stock["dspy"]["predictor_lms"] == {"extract": "scripted/large", "classify": "scripted/small"}
    # the scripted LM's provider fine-tunes under stock BootstrapFinetune: every step runs, and the weight step
    # fine-tunes both LMs (the large-role one too: DSPy cannot leave a predictor out)
    assert stock["failed"] is False and stock["flag_compilation_error_occurred"] is False
    assert set(stock["val_scores"]) == {"baseline", "p", "p -> w", "p -> w -> p"}
    finetuned = {model.split(":ft-")[0] for model in stock["lm_calls_by_model"] if ":ft-" in model}
    assert finetuned == {"scripted/large", "scripted/small"}
    # its random search ran on the configured (large) LM: the small LM answered only BetterTogether's evaluations
    calls = {model: row["calls"] for model, row in stock["lm_calls_by_model"].items()}
    assert calls["scripted/large"] > calls["scripted/small"] and sum(calls.values()) == stock["lm_calls"]
    summary = result["summary"]
    assert summary["finished"] == {"studio": 1, "stock": 1} and summary["both_finished_seeds"] == [0]
    for arm in ("studio", "stock"):
        for measure in vs_dspy.MEASURES:
            assert summary[arm][measure]["n"] == 1 and summary[arm][measure]["sd"] is None
    assert summary["studio"]["test"]["mean"] == studio["test"]
    ratios = summary["ratios_stock_over_studio"]
    assert ratios["wall_s"] == round(stock["wall_s"] / studio["wall_s"], 3)
    assert ratios["peak_rss_mb"] == round(stock["peak_rss_mb"] / studio["peak_rss_mb"], 3)
    # the Studio's arm is two processes (the run's supervisor and its worker), DSPy's one
    assert (studio["processes"], stock["processes"]) == (2, 1)
    assert studio["tree_peak_rss_mb"] > studio["peak_rss_mb"] and stock["tree_peak_rss_mb"] <= stock["peak_rss_mb"]
    assert (written.stat().st_mtime_ns if written.is_file() else None) == before  # --quick writes no result file


def _arm(arm: str, seed: int, *, failed: bool = False, **values: float) -> dict:
    run = {"arm": arm, "seed": seed, "failed": failed, "wall_s": 10.0, "peak_rss_mb": 100.0, "tree_peak_rss_mb": 200.0,
           **values}
    if failed:
        run.update(error="ValueError: not enough values to unpack (expected 2, got 0)", stage="p -> w", test=None)
    return run


def test_the_ratios_cover_only_the_seeds_where_both_arms_finished() -> None:
    seeds = [
        {"studio": _arm("studio", 0, test=80.0, test_baseline=10.0),
         "stock": _arm("stock", 0, test=40.0, wall_s=30.0, peak_rss_mb=150.0, tree_peak_rss_mb=100.0)},
        {"studio": _arm("studio", 1, test=60.0, test_baseline=10.0),
         "stock": _arm("stock", 1, failed=True, returned_test=10.0)},
    ]
    summary = vs_dspy.summarize(seeds)
    assert summary["both_finished_seeds"] == [0]
    assert summary["ratios_stock_over_studio"] == {"test": 0.5, "wall_s": 3.0, "peak_rss_mb": 1.5,
                                                   "tree_peak_rss_mb": 0.5}
    assert summary["finished"] == {"studio": 2, "stock": 1}
    assert summary["stock_failures"] == [{"seed": 1, "stage": "p -> w",
                                          "error": "ValueError: not enough values to unpack (expected 2, got 0)"}]
    assert summary["studio"]["test"] == {"mean": 70.0, "sd": 14.14, "n": 2}
    assert summary["stock"]["test"] == {"mean": 40.0, "sd": None, "n": 1}  # a failed arm has no test score
    assert summary["stock"]["returned_test"] == {"mean": 25.0, "sd": 21.21, "n": 2}  # what compile handed back
    none = vs_dspy.summarize([seeds[1]])
    assert none["ratios_stock_over_studio"] is None and none["both_finished_seeds"] == []


@pytest.mark.time_limit(60)
def test_a_step_that_fails_inside_bettertogether_is_the_stock_arms_result(tmp_path: Path) -> None:
    """DSPy's BetterTogether catches a failed step, logs it and returns the best program so far: the arm reads
    the exception from that log and records it with the strategy up to the failed step. Here the scripted LM
    stops answering during the weight step's trace collection, which stock BootstrapFinetune does not survive."""
    code = (
        "import json, sys\n"
        "sys.path.insert(0, 'bench')\n"
        "import vs_dspy\n"
        "from pathlib import Path\n"
        "doc = vs_dspy.arm_config_dict(0, quick=True)\n"
        "for spec in doc['lms'].values():\n"
        "    spec['options']['fail_after'] = 100  # past the baseline and the first prompt step\n"
        f"result = vs_dspy.stock_arm(doc, Path({str(tmp_path)!r}))\n"
        "print(json.dumps(result))\n"
    )  # a child process: the arm configures DSPy's settings, as it does in the benchmark's own child
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50,
                         env={**os.environ, "STUDIO_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed"] is True and result["flag_compilation_error_occurred"] is True
    assert (result["stage"], result["step"]) == ("p -> w", "w")
    assert result["error"] == "ValueError: not enough values to unpack (expected 2, got 0)"
    assert result["test"] is None and result["returned_test"] is not None
    assert list(result["val_scores"]) == ["baseline", "p"]
