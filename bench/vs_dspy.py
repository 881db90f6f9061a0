"""Benchmark: the Studio's default run against DSPy's own ``dspy.BetterTogether``, side by side.

Why not call ``dspy.BetterTogether`` yourself? For each seed, two arms on the default template
(``core.config.defaults.default_config()``: support-ticket triage, ``extract -> classify``, its sample, field
mapping and split, exact match on the labels, strategy ``p -> w -> p``, SmolLM2 for both roles, ``extract`` large
and ``classify`` small):

* ``studio``: the default run as the product runs it (``bench/default_run.py``'s ``measure_run``: ``RunManager``,
  the run's worker process, the Studio's optimizers);
* ``stock``: the same program with the same ``dspy.LM``s, built by the Studio (``core.plan.prepare.prepare_run``,
  whose LMs come from ``core.lms.registry``: the embedded llama.cpp engine and the LoRA fine-tuning provider behind
  ``dspy.LM``, ``extract`` on the large-role LM and ``classify`` on the small-role one), compiled by DSPy's own
  optimizer with the default run's settings mapped onto its arguments::

      dspy.configure(lm=large_lm)  # DSPy's first step; the random search runs on it (see below)
      dspy.BetterTogether(
          metric=metric,
          p=dspy.BootstrapFewShotWithRandomSearch(metric=metric, max_bootstrapped_demos=2, max_labeled_demos=1,
                                                  num_candidate_programs=2, max_rounds=1),
          w=dspy.BootstrapFinetune(metric=metric, exclude_demos=True,
                                   train_kwargs={<the w step's train_kwargs()>, "seed": seed, "output_dir": ...}),
      ).compile(student, trainset=train, valset=val, seed=seed, strategy="p -> w -> p")

  then the program it returns is evaluated on the same test split with the same metric (``dspy.Evaluate``).

DSPy is not patched. Where it raises, or where a step fails (``BetterTogether`` logs the error, stops and returns
the best program so far with ``flag_compilation_error_occurred`` set; it raises nothing), the arm's result is
``{"failed": true, "error": "<type>: <message>", "stage": "<the strategy up to the failed step>"}``, with the test
score of what it returned as ``returned_test``. What to expect from DSPy 3.4.1, read in its sources:

* ``BootstrapFinetune`` fine-tunes every distinct LM on the predictors: the large-role ``extract`` LM is
  fine-tuned too (two LoRA jobs, one after the other), and with ``multitask=True`` (its default) each LM trains on
  the rows of both predictors. It keeps a trace when its metric score is truthy (partial credit counts) and
  raises when an LM has no row to train on;
* ``BootstrapFewShotWithRandomSearch`` resets each predictor's LM (``reset_copy``), so its whole search runs on the
  configured LM, the base large-role model, in both prompt steps (after ``w`` the fine-tuned models take no part
  in choosing the demos); ``BetterTogether`` puts the predictors' LMs back afterwards;
* no setting of the Studio's prompt step's ``stratify`` (demo sets covering every label value), nor of its
  weight step's ``trace_source``, ``min_score`` and ``balance``, has an argument there: ``unmapped`` lists them.

Each arm runs in its own child process, one at a time, the order alternating across seeds (the Studio first for
the first seed). ``wall_s`` is the child's whole life (imports, model loads, the optimization, the test
evaluation); ``peak_rss_mb`` is the largest resident set of one of its processes (the child, or the Studio's run
worker), from ``os.wait4``'s ``ru_maxrss`` and ``VmHWM`` sampled while they run (``run_arm`` says why both). The
stock arm also reports its LM calls, their seconds and their answers' length per step and per model, and each
step's seconds (``BetterTogether``'s steps read from its log records). Seed ``s`` is the run's seed and the
split's (as in ``bench/quality.py``), so seed 0 is the default run itself. The base weights the fine-tunes start
from are cached once before the first arm, so neither arm pays for that.

    python bench/vs_dspy.py                 # 3 seeds x 2 arms: hours on 2 cores (run it alone on the machine)
    python bench/vs_dspy.py --seeds 0 --train 12 --val 6 --test 10   # one smaller seed: the path (~45 min)
    python bench/vs_dspy.py --quick         # the scripted test LM on a tiny split: the same code path, seconds

A full run (default sizes, not ``--quick``) also writes the JSON to ``bench/results/vs_dspy.json`` (``--out``
picks another file). Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_common import quiet_logging, rss_mb  # noqa: E402 - bench/ is on sys.path when run as a script

ARMS = ("studio", "stock")
RESULTS_FILE = ROOT / "bench" / "results" / "vs_dspy.json"
QUICK_SPLIT = {"train": 8, "val": 4, "test": 4}
ARM_TIMEOUT_S = {"quick": 120, "full": 4 * 3600}
STOCK_OPTIMIZERS = {"random_search": "BootstrapFewShotWithRandomSearch", "finetune": "BootstrapFinetune"}
UNMAPPED = {"random_search": ("stratify", "max_prompt_tokens"),
            "finetune": ("trace_source", "teacher_lm", "min_score", "balance")}
"""The Studio's step settings that DSPy's optimizers have no argument for (the stock arm runs without them)."""


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the configuration of one arm ----------------------------------------------------------------


def arm_config_dict(seed: int, *, quick: bool = False, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """The default run's configuration for ``seed`` (the run's seed and the split's), both arms': ``quick`` puts
    the scripted test LM in both roles on a tiny split; ``sizes`` (train, val, test) shrinks the split."""
    from core.config.defaults import DEFAULT_TEMPLATE, default_config_dict, scripted_config_dict

    doc = default_config_dict(DEFAULT_TEMPLATE)
    if quick:
        doc["lms"] = scripted_config_dict(DEFAULT_TEMPLATE)["lms"]  # the same role names, the scripted LM
        doc["data"]["split"] = {**doc["data"]["split"], **QUICK_SPLIT}
    doc["data"]["split"] = {**doc["data"]["split"], **(sizes or {}), "seed": seed}
    doc["seed"] = seed
    return doc


# --- the arms (each in its own child process) --------------------------------------------------------


def studio_arm(doc: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The default run of ``doc`` as the product runs it (``bench/default_run.py``'s ``measure_run``)."""
    from default_run import measure_run

    from core.config.schema import parse_config

    run = measure_run(parse_config(doc), quick=quick)
    result: dict[str, Any] = {
        "test": run["test_best"], "test_baseline": run["test_baseline"], "val_baseline": run["baseline_val"],
        "val_best": run["best_val"], "best_strategy": run["best_strategy"],
        "val_scores": {r["strategy"]: r["score"] for r in run["rounds"]},
        "step_seconds": {r["strategy"]: r["seconds"] for r in run["rounds"]},
        "lm_calls": sum(r["lm_calls"] for r in run["rounds"]), "cache": run["cache"],
        "run_wall_s": run["wall_seconds"], "worker_peak_rss_mb": run["worker_peak_rss_mb"],
    }
    if run["status"] != "finished":
        result.update(failed=True, error=run["error"] or run["status"], stage="run")
    return result


class _Steps(logging.Handler):
    """What ``BetterTogether`` is doing, read from its own log records (DSPy untouched): the step running now
    (``baseline``, then each strategy prefix such as ``p -> w``) and when each began; and the exception of a step
    it caught (it logs it with ``exc_info`` and returns the best program so far instead of raising)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.current = "setup"
        self.began: dict[str, float] = {}
        self.error: BaseException | None = None
        self.failed_step: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "BASELINE EVALUATION" in message:
            self._begin("baseline")
        elif found := re.search(r"Current strategy:\S*\s*'([^']*)'", message):
            self._begin(found.group(1))
        elif "OPTIMIZATION SUMMARY" in message:
            self._begin("end")
        if record.levelno >= logging.ERROR:
            if (found := re.search(r"Step (\d+)/\d+ failed", message)) and self.failed_step is None:
                self.failed_step = int(found.group(1))
            if record.exc_info and record.exc_info[1] is not None and self.error is None:
                self.error = record.exc_info[1]

    def _begin(self, label: str) -> None:
        self.current = label
        self.began.setdefault(label, time.perf_counter())

    def seconds(self, end: float) -> dict[str, float]:
        """Seconds of each step (and of the baseline evaluation), up to ``end`` for the last one."""
        marks = sorted(self.began.items(), key=lambda item: item[1])
        bounds = [t for _, t in marks[1:]] + [end]
        return {label: round(stop - t, 1) for (label, t), stop in zip(marks, bounds, strict=True) if label != "end"}


def _call_recorder(steps: _Steps) -> Any:
    """A DSPy callback timing the LM calls and measuring their answers, per model and per step of ``steps``
    (it measures and changes nothing)."""
    from dspy.utils.callback import BaseCallback

    class CallRecorder(BaseCallback):
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.open: dict[str, tuple[str, str, float]] = {}
            self.calls: dict[tuple[str, str], list[tuple[float, int]]] = {}  # (step, model) -> (seconds, chars)

        def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            with self.lock:
                self.open[call_id] = (steps.current, str(getattr(instance, "model", "?")), time.perf_counter())

        def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
            texts = outputs if isinstance(outputs, list) else [outputs]
            chars = sum(len((t.get("text") or "") if isinstance(t, dict) else str(t or "")) for t in texts)
            with self.lock:
                step, model, started = self.open.pop(call_id, (steps.current, "?", time.perf_counter()))
                self.calls.setdefault((step, model), []).append((time.perf_counter() - started, chars))

        def total(self) -> int:
            with self.lock:
                return sum(len(rows) for rows in self.calls.values())

        def table(self, by: int) -> dict[str, dict[str, Any]]:
            """Per model (``by=1``) or per step (``by=0``): calls, their seconds, their answers' mean and largest
            length in characters."""
            groups: dict[str, list[tuple[float, int]]] = {}
            with self.lock:
                for key, rows in self.calls.items():
                    groups.setdefault(key[by], []).extend(rows)
            return {name: {"calls": len(rows), "seconds": round(sum(t for t, _ in rows), 1),
                           "answer_chars_mean": round(sum(c for _, c in rows) / len(rows), 1),
                           "answer_chars_max": max(c for _, c in rows)} for name, rows in groups.items()}

    return CallRecorder()


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) not in text:
        text += f" (from {type(cause).__name__}: {cause})"
    return text[:2000]


def stock_optimizers(config: Any, metric: Any, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """DSPy's own optimizer per strategy key, from the configuration's step settings: (optimizers, the arguments
    each was given as plain data)."""
    import dspy

    optimizers: dict[str, Any] = {}
    arguments: dict[str, Any] = {}
    for key, spec in config.optimizers.items():
        s = spec.settings
        if spec.type == "random_search":
            kwargs = {"max_bootstrapped_demos": s.max_bootstrapped_demos, "max_labeled_demos": s.max_labeled_demos,
                      "num_candidate_programs": s.num_candidate_programs, "max_rounds": s.max_rounds}
            optimizers[key] = dspy.BootstrapFewShotWithRandomSearch(metric=metric, **kwargs)
        elif spec.type == "finetune":
            # what the provider takes (core.lms.lora.params): the step's hyper-parameters, the run's seed, and the
            # folder its artifacts go to (required); the Studio's weight step passes the same plus its callbacks
            train_kwargs = {**s.train_kwargs(), "seed": config.seed, "output_dir": str(output_dir)}
            kwargs = {"exclude_demos": s.exclude_demos, "train_kwargs": train_kwargs}
            optimizers[key] = dspy.BootstrapFinetune(metric=metric, **kwargs)
        else:
            raise SystemExit(f"step {key!r} is a {spec.type!r} step; this benchmark maps only "
                             f"{sorted(STOCK_OPTIMIZERS)} onto DSPy's optimizers")
        arguments[key] = {"optimizer": STOCK_OPTIMIZERS[spec.type], **kwargs,
                          "unmapped": {name: getattr(s, name) for name in UNMAPPED[spec.type]}}
    return optimizers, arguments


def stock_arm(doc: dict[str, Any], home: Path) -> dict[str, Any]:
    """``dspy.BetterTogether`` with DSPy's own optimizers on the Studio's program and LMs (module docstring)."""
    import dspy

    from core.config.schema import parse_config
    from core.config.strategy import join_steps, split_strategy
    from core.plan.prepare import prepare_run

    config = parse_config(doc)
    prepared = prepare_run(config)  # the program, each predictor on its role's LM (core.lms.registry), split, metric
    student, metric, split = prepared.program, prepared.metric, prepared.split
    keys = split_strategy(config.strategy)
    optimizers, arguments = stock_optimizers(config, metric, home / "finetunes")
    result: dict[str, Any] = {"dspy": {"optimizers": arguments, "strategy": config.strategy,
                                       "context_lm": prepared.context_lm.model,
                                       "predictor_lms": {n: p.lm.model for n, p in student.named_predictors()}}}
    steps = _Steps()
    calls = _call_recorder(steps)
    bt_logger = logging.getLogger("dspy.teleprompt.bettertogether")
    bt_logger.addHandler(steps)
    bt_logger.setLevel(logging.INFO)  # its step boundaries are INFO records (bench_common quiets DSPy's loggers)
    # DSPy's first step in every tutorial; needed here: the random search resets each predictor's LM and runs on it
    dspy.configure(lm=prepared.context_lm, callbacks=[calls])
    started = time.perf_counter()
    try:
        optimizer = dspy.BetterTogether(metric=metric, **optimizers)
        compiled = optimizer.compile(student, trainset=list(split.train), valset=list(split.val), seed=config.seed,
                                     strategy=config.strategy)
    except Exception as e:  # noqa: BLE001 - DSPy's own failure is the arm's result
        return {**result, "failed": True, "error": _error_text(e), "stage": "compile",
                "compile_s": round(time.perf_counter() - started, 1), "lm_calls": calls.total()}
    finally:
        bt_logger.removeHandler(steps)
    result["compile_s"] = round(time.perf_counter() - started, 1)
    result["step_seconds"] = steps.seconds(time.perf_counter())
    result["lm_calls"] = calls.total()
    result["lm_calls_by_model"] = calls.table(by=1)
    result["lm_calls_by_step"] = calls.table(by=0)
    candidates = compiled.candidate_programs  # best first
    result["val_scores"] = {c["strategy"] or "baseline": c["score"] for c in candidates}
    result["best_strategy"] = candidates[0]["strategy"]
    result["val_best"] = candidates[0]["score"]
    result["returned_lms"] = {n: p.lm.model for n, p in compiled.named_predictors()}
    result["flag_compilation_error_occurred"] = bool(compiled.flag_compilation_error_occurred)
    started = time.perf_counter()
    try:
        evaluate = dspy.Evaluate(devset=list(split.test), metric=metric, display_progress=False, display_table=False,
                                 max_errors=len(split.test) + 1)
        test = float(evaluate(compiled).score)
    except Exception as e:  # noqa: BLE001
        return {**result, "failed": True, "error": _error_text(e), "stage": "test"}
    result["test_s"] = round(time.perf_counter() - started, 1)
    if compiled.flag_compilation_error_occurred:
        index = steps.failed_step or len(candidates)  # the step that failed: its 1-based index
        result.update(failed=True, stage=join_steps(keys[:index]), step=keys[index - 1] if index <= len(keys)
                      else None, returned_test=test, test=None,
                      error=_error_text(steps.error) if steps.error else "a step failed (no exception logged)")
    else:
        result["test"] = test
    return result


def child_main(args: argparse.Namespace) -> int:
    """One arm in this process; its result goes to ``args.result`` as JSON."""
    quiet_logging()
    doc = arm_config_dict(args.seed, quick=args.quick, sizes=_sizes(args))
    with contextlib.redirect_stdout(sys.stderr):  # DSPy prints its progress
        if args.arm == "studio":
            result = studio_arm(doc, args.quick)
        else:
            result = stock_arm(doc, Path(os.environ["STUDIO_HOME"]))
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")
    return 0


# --- the parent: arms in child processes, one at a time ----------------------------------------------


def _tree(root: int) -> list[int]:
    """``root`` and its live descendants (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


class _Memory:
    """The memory of an arm's processes, sampled while they live: each one's peak (``VmHWM``, as
    ``bench/default_run.py`` reads its worker's) and the largest sum of their resident sets at one sample."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}
        self.tree_peak = 0.0

    def sample(self, root: int) -> None:
        total = 0.0
        for pid in _tree(root):
            rss = rss_mb(pid) or 0.0
            total += rss
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), rss, rss_mb(pid, "VmHWM") or 0.0)
        self.tree_peak = max(self.tree_peak, total)


def run_arm(arm: str, seed: int, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """``arm`` for ``seed`` in a child process: its result, wall time and peak RSS.

    The peak is the largest resident set of one process of the arm (the child, or the Studio's run worker), the
    larger of two readings: ``ru_maxrss`` from ``os.wait4`` (the child's and its waited-for descendants') and the
    ``VmHWM`` sampled every half second. Both are needed: the LoRA provider restarts its process's high-water mark
    before the GGUF export (``core.lms.lora.params.restart_peak_rss``), which lowers ``ru_maxrss`` too, so the
    training's peak survives only in a sample taken before the restart; a sample can miss a short peak that
    ``ru_maxrss`` keeps. ``tree_peak_rss_mb`` is the largest sum of the arm's processes' resident sets at a sample."""
    home.mkdir(parents=True)
    result_file = home / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--seeds", str(seed),
           "--result", str(result_file), *_size_args(args), *(["--quick"] if args.quick else [])]
    env = {**os.environ, "STUDIO_HOME": str(home)}
    timeout = args.arm_timeout or ARM_TIMEOUT_S["quick" if args.quick else "full"]
    _log(f"seed {seed}: {arm} arm starts")
    started = time.monotonic()
    # the child's prints (DSPy's progress, the run's events) are progress: stderr; its own session, so that a
    # timeout kills the Studio's run worker with it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sys.stderr.fileno(), start_new_session=True)
    memory = _Memory()
    timed_out = False
    while True:
        memory.sample(proc.pid)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > timeout:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.5)
    proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    wall = round(time.monotonic() - started, 1)
    ru_maxrss = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
    sampled = max(memory.peaks.values(), default=0.0)
    measured = {"wall_s": wall, "peak_rss_mb": max(ru_maxrss, sampled), "ru_maxrss_mb": ru_maxrss,
                "sampled_peak_rss_mb": sampled, "tree_peak_rss_mb": round(memory.tree_peak, 1),
                "processes": len(memory.peaks), "exit_code": code}
    if timed_out:
        result = {"failed": True, "error": f"TimeoutError: the arm ran past {timeout} s and was killed",
                  "stage": "process"}
    elif result_file.is_file():
        result = json.loads(result_file.read_text(encoding="utf-8"))
    else:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        result = {"failed": True, "error": f"ChildProcessError: the arm's process ended with {how}, no result",
                  "stage": "process"}
    result = {"seed": seed, "arm": arm, "failed": bool(result.get("failed")), **measured, **result}
    _log(f"seed {seed}: {arm} arm: test {result.get('test')}, {wall} s, {measured['peak_rss_mb']} MB"
         + (f"; FAILED at {result.get('stage')}: {result.get('error')}" if result["failed"] else ""))
    return result


def _mean_sd(values: list[Any]) -> dict[str, Any]:
    from core.evidence.stats import mean_sd

    numbers = [float(v) for v in values if v is not None]
    mean, sd = mean_sd(numbers)
    return {"mean": None if mean is None else round(mean, 2), "sd": None if sd is None else round(sd, 2),
            "n": len(numbers)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


MEASURES = ("test", "wall_s", "peak_rss_mb", "tree_peak_rss_mb")


def summarize(seeds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Mean and sd of each measure per arm (test: over the seeds the arm finished), and the ratios stock/studio
    of the means over the seeds where both arms finished."""
    both = [s for s in seeds if not s["studio"]["failed"] and not s["stock"]["failed"]]
    out: dict[str, Any] = {
        arm: {m: _mean_sd([s[arm].get(m) for s in seeds if m != "test" or not s[arm]["failed"]]) for m in MEASURES}
        for arm in ARMS
    }
    out["studio"]["test_baseline"] = _mean_sd([s["studio"].get("test_baseline") for s in seeds])
    out["stock"]["returned_test"] = _mean_sd([s["stock"].get("returned_test" if s["stock"]["failed"] else "test")
                                              for s in seeds])
    out["finished"] = {arm: sum(not s[arm]["failed"] for s in seeds) for arm in ARMS}
    out["stock_failures"] = [{"seed": s["stock"]["seed"], "stage": s["stock"].get("stage"),
                              "error": s["stock"].get("error")} for s in seeds if s["stock"]["failed"]]
    out["both_finished_seeds"] = [s["studio"]["seed"] for s in both]
    means = {arm: {m: _mean_sd([s[arm].get(m) for s in both])["mean"] for m in MEASURES} for arm in ARMS}
    out["ratios_stock_over_studio"] = (
        {m: _ratio(means["stock"][m], means["studio"][m]) for m in MEASURES} if both else None)
    return out


def machine() -> dict[str, Any]:
    """The machine and the versions the numbers were measured with."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    versions = {}
    for package in ("dspy", "llama_cpp_python", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = round(int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                                if line.startswith("MemTotal:"))) / 1024**2, 1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory, "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), **versions, "commit": commit.stdout.strip() or None,
            "date": time.strftime("%Y-%m-%d")}


def _warm_model_cache(doc: dict[str, Any]) -> float:
    """The base weights every embedded LM of ``doc`` is fine-tuned from, made once before the arms (both arms
    read them from ``STUDIO_MODEL_CACHE``); seconds it took (0 when already there)."""
    keys = sorted({spec["model"] for spec in doc["lms"].values() if spec.get("kind") == "embedded"})
    if not keys:
        return 0.0
    started = time.perf_counter()
    code = f"from core.lms.lora import ensure_hf_cache\nfor key in {keys!r}:\n    ensure_hf_cache(key)\n"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, stdout=sys.stderr.fileno(), timeout=1800)
    return round(time.perf_counter() - started, 1)


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    return {name: value for name in ("train", "val", "test") if (value := getattr(args, name)) is not None}


def _size_args(args: argparse.Namespace) -> list[str]:
    return [item for name, value in _sizes(args).items() for item in (f"--{name}", str(value))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the scripted test LM on a tiny split (CI)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    parser.add_argument("--train", type=int, default=None, help="training examples (default: the default run's)")
    parser.add_argument("--val", type=int, default=None, help="validation examples (default: the default run's)")
    parser.add_argument("--test", type=int, default=None, help="test examples (default: the default run's)")
    parser.add_argument("--out", default=None, help=f"also write the JSON here (default for a full run: "
                                                    f"{RESULTS_FILE.relative_to(ROOT)})")
    parser.add_argument("--arm-timeout", type=float, default=None, help="seconds per arm before it is killed "
                                                                         "(default 4 h; --quick: 120 s)")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # a child: this arm, the first seed
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:
        args.seed = args.seeds[0]
        return child_main(args)
    quiet_logging()
    from core.paths import model_cache_dir

    os.environ.setdefault("STUDIO_MODEL_CACHE", str(model_cache_dir()))  # shared: the arms' homes are temporary
    started = time.monotonic()
    first = arm_config_dict(args.seeds[0], quick=args.quick, sizes=_sizes(args))
    info = machine()
    warm_s = 0.0 if args.quick else _warm_model_cache(first)
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-dspy-") as tmp:
        for position, seed in enumerate(args.seeds):
            order = ARMS if position % 2 == 0 else ARMS[::-1]
            arms = {arm: run_arm(arm, seed, args, Path(tmp) / f"seed{seed}-{arm}") for arm in order}
            per_seed.append({"seed": seed, "order": list(order), **arms})
    info["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    split = first["data"]["split"]
    document = {
        "bench": "vs_dspy", "quick": args.quick, "seeds": args.seeds,
        "template": first["program"]["name"], "strategy": first["strategy"],
        "split": {k: split[k] for k in ("train", "val", "test")},
        "models": {name: spec.get("model") or spec.get("factory") for name, spec in first["lms"].items()},
        "predictors": first["predictors"], "optimizers": first["optimizers"],
        "machine": info, "model_cache_warmup_s": warm_s, "wall_s": round(time.monotonic() - started, 1),
        "summary": summarize(per_seed), "runs": per_seed,
    }
    full = not args.quick and not _sizes(args)
    out = args.out or (str(RESULTS_FILE) if full else None)
    if out:
        Path(out).write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
