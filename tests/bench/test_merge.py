"""bench/quality.py --merge and --default-run on recorded outputs (no model runs): the table and the
targets docs/benchmarks.md quotes come out of the numbers given, and only a plain default run judges the
5-minute target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ["baseline", "p", "w", "p -> w", "p -> w -> p"]


def _run_doc(task: str, seed: int, scores: list[float], run_seconds: float) -> dict:
    return {"task": task, "seed": seed, "scores": dict(zip(STRATEGIES, scores, strict=True)),
            "seconds": dict.fromkeys(STRATEGIES, 10.0), "phases": {},
            "default_run": {"run_seconds": run_seconds}, "estimate": {"error_pct": 5.0}}


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/quality.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def _default_run(path: Path, **fields) -> str:
    doc = {"bench": "default_run", "quick": False, "status": "finished", "call_cache": True, "overrides": {},
           "wall_seconds": 250.0, **fields}
    path.write_text("progress line\n" + json.dumps(doc) + "\n", encoding="utf-8")
    return str(path)


def _outs(tmp_path: Path) -> list[str]:
    paths = []
    for seed, (pwp, run_seconds) in enumerate([(80.0, 900.0), (70.0, 950.0)]):
        runs = [_run_doc("support_triage", seed, [10.0, 20.0, 60.0, 60.0, pwp], run_seconds),
                _run_doc("classifier", seed, [40.0, 50.0, 90.0, 90.0, 95.0], 300.0)]
        path = tmp_path / f"q{seed}.json"
        path.write_text(json.dumps({"bench": "quality", "runs": runs, "test_examples": 40}), encoding="utf-8")
        paths.append(str(path))
    return paths


def test_merge_judges_the_five_minute_target_on_the_benchmarks_own_runs_without_default_run(tmp_path) -> None:
    out = _bench("--merge", *_outs(tmp_path))
    assert out.returncode == 0, out.stderr
    merged = json.loads(out.stdout.strip().splitlines()[-1])
    assert merged["table"]["support_triage"]["p -> w -> p"]["mean"] == 75.0
    assert merged["table"]["support_triage"]["p -> w -> p"]["seeds"] == [80.0, 70.0]
    targets = merged["targets"]
    assert targets["pwp_beats_p_and_w"] == {"support_triage": True, "classifier": True}
    assert targets["pwp_minus_baseline"] == {"support_triage": 65.0, "classifier": 55.0}
    assert targets["default_run_seconds"] == [900.0, 950.0]
    assert targets["default_run_within_300s"] is False


def test_merge_with_default_run_outputs_judges_the_target_on_them(tmp_path) -> None:
    runs = [_default_run(tmp_path / "d1.json", wall_seconds=250.0), _default_run(tmp_path / "d2.json", wall_seconds=290.0)]
    out = _bench("--merge", *_outs(tmp_path), "--default-run", *runs)
    assert out.returncode == 0, out.stderr
    targets = json.loads(out.stdout.strip().splitlines()[-1])["targets"]
    assert targets["default_run_seconds"] == [250.0, 290.0]
    assert targets["default_run_measured_by"] == "bench/default_run.py"
    assert targets["default_run_within_300s"] is True
    errors = targets["default_run_estimate_error_pct"]  # the Strategy page's estimate of the default run
    assert len(errors) == 2 and errors[0] > errors[1]  # the same estimate against 250 s and 290 s
    slow = _default_run(tmp_path / "d3.json", wall_seconds=301.0)
    out = _bench("--merge", *_outs(tmp_path), "--default-run", runs[0], slow)
    assert json.loads(out.stdout.strip().splitlines()[-1])["targets"]["default_run_within_300s"] is False


def test_a_default_run_with_a_lever_switched_off_is_refused_by_name(tmp_path) -> None:
    for fields, words in [({"call_cache": False}, "--no-call-cache"), ({"overrides": {"w.trace_source": "self"}},
                                                                       "w.trace_source"),
                          ({"quick": True}, "--quick"), ({"status": "failed"}, "did not finish")]:
        out = _bench("--merge", *_outs(tmp_path), "--default-run", _default_run(tmp_path / "d.json", **fields))
        assert out.returncode != 0
        assert words in out.stderr and "Traceback" not in out.stderr


def test_reuse_w_finds_each_task_and_seeds_earlier_w_measurement(tmp_path: Path) -> None:
    """--reuse-w: a change to prompt steps leaves a w run as it was; its score comes from the earlier file of the
    same task, seed and test size, and the file is named in the result."""
    sys.path.insert(0, str(ROOT / "bench"))
    import quality

    first, second = _outs(tmp_path)
    other_size = tmp_path / "q20.json"
    other_size.write_text(json.dumps({"bench": "quality", "test_examples": 20, "runs": [
        _run_doc("support_triage", 0, [0.0, 0.0, 11.0, 0.0, 0.0], 1.0)]}), encoding="utf-8")
    found = quality.earlier_w_runs([first, second, str(other_size)])
    assert found[("support_triage", 1, 40)]["score"] == 60.0 and found[("support_triage", 1, 40)]["from"] == second
    assert found[("classifier", 0, 40)]["score"] == 90.0
    assert found[("support_triage", 0, 20)]["score"] == 11.0  # another test size is another measurement
    assert ("support_triage", 2, 40) not in found


def test_a_task_re_measured_in_a_later_file_replaces_the_earlier_seeds(tmp_path) -> None:
    """One task measured again after a change (one file per seed): its seeds come from the later files,
    the other tasks' from the earlier ones."""
    later = []
    for seed, pwp in enumerate([40.0, 50.0]):
        path = tmp_path / f"again{seed}.json"
        path.write_text(json.dumps({"bench": "quality", "test_examples": 40, "runs": [
            _run_doc("classifier", seed, [40.0, 50.0, 30.0, 30.0, pwp], 300.0)]}), encoding="utf-8")
        later.append(str(path))
    out = _bench("--merge", *_outs(tmp_path), *later)
    assert out.returncode == 0, out.stderr
    merged = json.loads(out.stdout.strip().splitlines()[-1])
    assert merged["table"]["classifier"]["p -> w -> p"]["seeds"] == [40.0, 50.0]
    assert merged["table"]["classifier"]["w"]["seeds"] == [30.0, 30.0]
    assert merged["table"]["support_triage"]["p -> w -> p"]["seeds"] == [80.0, 70.0]
    assert len(merged["runs"]) == 4


def test_a_merge_of_runs_without_w_gives_the_gain_and_leaves_w_out(tmp_path: Path) -> None:
    """``--no-w`` measures only the p -> w -> p run: its gain over the baseline is judged, p-and-w is not."""
    runs = []
    for seed, scores in ((0, [34.0, 34.0, 32.0, 32.0]), (1, [34.0, 36.0, 90.0, 94.0])):
        doc = _run_doc("pump_status", seed, [*scores[:2], 0.0, *scores[2:]], 900.0)
        del doc["scores"]["w"], doc["seconds"]["w"]
        runs.append(doc)
    path = tmp_path / "no_w.json"
    path.write_text(json.dumps({"bench": "quality", "test_examples": None, "runs": runs}), encoding="utf-8")
    done = _bench("--merge", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row = result["table"]["pump_status"]
    assert row["w"]["mean"] is None and row["w"]["seeds"] == []
    assert row["p -> w -> p"]["seeds"] == [32.0, 94.0] and row["baseline"]["mean"] == 34.0
    targets = result["targets"]
    assert targets["pwp_minus_baseline"] == {"pump_status": 29.0}  # (32 + 94) / 2 - 34
    assert targets["tasks_scored"] == [] and targets["pwp_beats_p_and_w"] == {}
