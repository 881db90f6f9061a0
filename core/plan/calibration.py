"""This machine's speed against the machine the estimate's constants were measured on: a probe of about half a
minute, cached per build, which the estimate reads (and never runs).

``core.plan.estimate`` prices an embedded call and a training row with constants measured on the project's 2-core
machine. A slower machine, or another build of llama.cpp or torch, takes longer: a default run measured 433 s on a
machine where ``bench/prompt_length.py`` gave 0.56 s per 150-character call, estimated ~270 s. The probe times two
things here, each the same as a reference measurement, and divides (``Calibration.calls``, ``.training``):

- **calls**: the median of ``CALLS`` calls of the classifier template's ``Predict`` (SmolLM2, the run's adapter and
  grammar, the shared llama.cpp engine, after one warm-up call) on the first texts of 150 characters that
  ``bench/prompt_length.py`` makes: 0.371 s on the reference machine (idle, 1 December 2026,
  ``bench/results/prompt_length.json``), the day ``bench/call_time.py`` gave ``EMBEDDED_CALL_SECONDS`` and
  ``SECONDS_PER_OUTPUT_TOKEN``; it said 0.41 s on 30 November, when ``SECONDS_PER_INPUT_CHAR`` was measured.
- **training**: seconds per training row of 384 tokens (cut to ``max_length`` as a run's are) in LoRA steps of 2
  rows (one pass of ``micro_batch_tokens``, as a run's batch of 4 trains) of the real trainer, through the doctor's
  ``measure_lora_step``; its first step (loading, warm-up) is not counted. Reference: the estimate's 0.6 s per row
  (``SECONDS_PER_TRAIN_ROW``, the default run of 30 November 2026): the factor also carries what the trainer's
  changes since then cost, so it prices the trainer as it is.

The estimate multiplies every embedded time by these factors: a call's (fixed part, input and answer terms) by
``calls``; a weight step's fixed part, rows and export by ``training``. Hosted and scripted LMs are not scaled.

Each probe runs in a child process (``core.lms.doctor.run_check``: a native crash names its signal and never takes
the app with it). The measurements are cached as JSON in ``$STUDIO_HOME/calibration.json`` with the key of what
they depend on (``machine_key``: llama-cpp-python's version and build, torch's version, the CPU model, the usable
cores). ``current()`` (every estimate; it only reads) gives the factors for this key, else 1.0 with the reason:
never measured, measured for another key, or an unreadable file. Measured by ``python -m core doctor`` when the
cache is not current (so ``make install`` measures each new build), by ``python -m core calibrate`` and by the
Models page's button, always on request.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.paths import DATA_DIR, studio_home

FORMAT = 1
TRAINER = 2
"""The trainer's version as the probe sees it: 2 since a CPU without bfloat16 instructions trains in float32 (it was
float32 under bfloat16 autocast: 68 s per probe row on an AVX2-only CPU, ~20x float32's). A probe of an older trainer
is stale."""
REFERENCE_CALL_SECONDS = 0.371  # median of 8 calls at 150 characters, bench/results/prompt_length.json
REFERENCE_CALL_CHARS = 150
CALLS = 8  # the bench's calls per length: the median of the same 8 texts
REFERENCE_ROW_SECONDS = 0.6  # core.plan.estimate.SECONDS_PER_TRAIN_ROW["embedded"] (tests hold them equal)
REFERENCE_ROW_TOKENS = 384  # core.plan.estimate.TRAINED_ROW_TOKENS: the rows are cut to it (max_length)
TRAIN_STEPS = 3  # the first one loads and warms up: the 2 later ones are timed
ROWS_PER_STEP = 2  # 2 x 384 tokens: one pass of micro_batch_tokens (768), as each pass of a run's batch of 4
ROW_CHARS = 1800  # a row's prompt: the row is ~426 tokens with its answer, cut to REFERENCE_ROW_TOKENS
ANSWER = "[[ ## intent ## ]]\nbilling\n\n[[ ## urgency ## ]]\nhigh\n\n[[ ## completed ## ]]"  # 2 labels, as classify's
BUSY_LOAD = 0.5  # a 1-minute load average at or above this share of the usable cores: measured on a busy machine


@dataclass(frozen=True)
class Calibration:
    """This machine's factors (its time / the reference machine's), or 1.0 and ``reason`` when not calibrated."""

    calls: float = 1.0
    training: float = 1.0
    calibrated: bool = False
    reason: str = ""
    measured_at: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    """The key it was measured for (``machine_key``)."""
    call_seconds: float | None = None
    row_seconds: float | None = None
    probe_seconds: float | None = None
    load: float | None = None
    """The 1-minute load average when the probe started."""
    threads: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def busy(self) -> bool:
        cores = self.machine.get("cores") or 1
        return self.load is not None and self.load >= BUSY_LOAD * cores


# --- what the cache depends on ---------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    import platform

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    return cores


@functools.cache
def machine_key() -> dict[str, Any]:
    """What the factors depend on: a change of any of these makes the cache stale (read once per process)."""
    from core.lms.doctor import installed_build

    return {"llama_cpp_python": _version("llama_cpp_python"), "llama_build": installed_build(),
            "torch": _version("torch"), "cpu": cpu_model(), "cpu_flags": _precision_flags(), "cores": usable_cores(),
            "trainer": TRAINER}


PRECISION_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "bf16")
"""The CPU flags the trainer's precision and speed turn on (``core.lms.lora.device``): a CPU model's name ("AMD
EPYC") does not tell an AVX2-only CPU from one with bfloat16 instructions."""


@functools.cache
def _precision_flags() -> str:
    """Which of ``PRECISION_FLAGS`` this CPU has (read from the kernel once per process: every estimate reads the
    key, and the app's process must not import torch for it)."""
    from core.lms.lora.device import cpu_flags

    return " ".join(flag for flag in PRECISION_FLAGS if flag in cpu_flags())


def cache_path() -> Path:
    return studio_home() / "calibration.json"


# --- reading the cache (every estimate) ------------------------------------------------------------------------

MEASURE_HINT = "`python -m core calibrate` or the Models page measures it"


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise ValueError(f"{what} is {value!r}, not a positive number of seconds")
    return float(value)


def _from_record(record: Any) -> Calibration:
    """The calibration a cache record holds; ValueError when it is not one."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"not a calibration record of format {FORMAT}")
    call = _positive(record["calls"]["median_s"], "calls.median_s")
    row = _positive(record["training"]["row_seconds"], "training.row_seconds")
    if not isinstance(record["key"], dict):
        raise ValueError("key is not an object")
    return Calibration(calls=round(call / REFERENCE_CALL_SECONDS, 3), training=round(row / REFERENCE_ROW_SECONDS, 3),
                       calibrated=True, measured_at=str(record.get("measured_at") or "?"), machine=record["key"],
                       call_seconds=call, row_seconds=row, probe_seconds=_number(record.get("probe_seconds")),
                       load=_number(record.get("load")), threads=dict(record.get("threads") or {}))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@functools.lru_cache(maxsize=4)
def _read(path: str, stamp: tuple[int, int]) -> Calibration | str:
    """The cache file parsed (by path and (mtime, size): read again only when it changes), or why it is not."""
    try:
        return _from_record(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{type(e).__name__}: {e}"[:200]


def current() -> Calibration:
    """The factors for this machine and build from the cache; 1.0 and the reason when there are none for them.
    Never measures, never raises."""
    path = cache_path()
    try:
        stat = path.stat()
    except OSError:
        return Calibration(reason=f"not measured on this machine yet ({MEASURE_HINT})")
    found = _read(str(path), (stat.st_mtime_ns, stat.st_size))
    if isinstance(found, str):
        return Calibration(reason=f"the cached calibration {path} is unreadable ({found}); {MEASURE_HINT} again")
    key = machine_key()
    changed = [f"{name} {found.machine.get(name)!r} -> {key[name]!r}" for name in key if found.machine.get(name) != key[name]]
    if changed:
        return Calibration(reason=f"measured for another machine or build ({'; '.join(changed)}); {MEASURE_HINT} again")
    return found


# --- measuring (on request) ------------------------------------------------------------------------------------


def probe_checks() -> list[Any]:
    """The two probes, each a child process: calls, then training, of the default small model."""
    from core.lms.catalog import DEFAULT_MODELS
    from core.lms.doctor import GENERATE_TIMEOUT_S, LORA_TIMEOUT_S, Check

    child, key = (sys.executable, "-m", "core.plan.calibration", "--child"), DEFAULT_MODELS["small"]
    return [Check(f"calibrate calls {key}", (*child, "calls", key), GENERATE_TIMEOUT_S),
            Check(f"calibrate training {key}", (*child, "training", key), LORA_TIMEOUT_S, component="torch")]


def measure(on_probe: Callable[[Any], Any] | None = None) -> tuple[Calibration, list[Any]]:
    """Run the probes (``probe_checks``) and cache what they measured: (the calibration now, the probes' results).
    A probe that fails (its result says why) stops the others and leaves the cache as it was."""
    from core.lms.doctor import run_check

    started, load = time.monotonic(), _load()
    results = []
    for check in probe_checks():
        if on_probe is not None:
            on_probe(check)
        results.append(run_check(check))
        if not results[-1].ok:
            return current(), results
    calls, training = results[0].metrics, results[1].metrics
    record = {"format": FORMAT, "key": machine_key(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "probe_seconds": round(time.monotonic() - started, 1), "load": load,
              "probes": {r.name: r.seconds for r in results},
              "threads": {"llama.cpp": calls.get("threads"), "torch": training.get("torch_threads")},
              "calls": calls, "training": training,
              "reference": {"call_seconds": REFERENCE_CALL_SECONDS, "row_seconds": REFERENCE_ROW_SECONDS}}
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(partial, path)
    return current(), results


def ensure(on_probe: Callable[[Any], Any] | None = None) -> tuple[Calibration, list[Any]]:
    """``current()`` when it is calibrated, else ``measure``: (the calibration, the probes' results: none when the
    cache was current)."""
    found = current()
    return (found, []) if found.calibrated else measure(on_probe)


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- the probes (in their child processes) ---------------------------------------------------------------------


def reference_texts(chars: int, count: int, seed: int) -> list[str]:
    """``bench/prompt_length.py``'s texts: ``count`` texts of about ``chars`` characters, whole sentences of the
    bundled documents drawn with ``seed`` (the bench draws with seed = chars)."""
    with (DATA_DIR / "documents.csv").open(encoding="utf-8") as f:
        sentences = [s.strip() + "." for row in csv.DictReader(f) for s in row["document"].split(".") if s.strip()]
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = ""
        while len(text) < chars:
            text += rng.choice(sentences) + " "
        out.append(text[:chars].strip())
    return out


def measure_calls(key: str, calls: int = CALLS) -> dict[str, Any]:
    """Seconds per call of the classifier template's ``Predict`` served by ``key`` on the bench's 150-character
    texts, after one warm-up call (which loads the model): the median, as ``bench/prompt_length.py`` times them."""
    import dspy

    from core.config.defaults import default_config_dict
    from core.config.schema import parse_config
    from core.lms import catalog
    from core.lms.adapter import StudioChatAdapter
    from core.lms.embedded import LlamaEngine
    from core.plan.prepare import prepare_run

    doc = default_config_dict("classifier")
    for spec in doc["lms"].values():
        spec["model"] = key
    prepared = prepare_run(parse_config(doc))
    program = prepared.program
    (name,) = next(iter(program.named_predictors()))[1].signature.input_fields
    seconds = []
    with dspy.context(adapter=StudioChatAdapter(prepared.runtimes)), contextlib.redirect_stdout(sys.stderr):
        program(**{name: "warm-up."})
        for text in reference_texts(REFERENCE_CALL_CHARS, calls, seed=REFERENCE_CALL_CHARS):
            begun = time.perf_counter()
            program(**{name: text})
            seconds.append(round(time.perf_counter() - begun, 3))
    llama = LlamaEngine.shared().resolve(catalog.model_name(key)).llama
    return {"model": key, "chars": REFERENCE_CALL_CHARS, "seconds": seconds,
            "median_s": round(statistics.median(seconds), 3), "threads": getattr(llama, "n_threads", None)}


def reference_rows(count: int) -> list[dict]:
    """``count`` training rows whose prompts (~``ROW_CHARS`` characters of the bundled documents) are cut to
    ``REFERENCE_ROW_TOKENS``, each answering two labels in the ChatAdapter's format."""
    return [{"messages": [{"role": "user", "content": "Classify this ticket.\n\n" + text},
                          {"role": "assistant", "content": ANSWER}]}
            for text in reference_texts(ROW_CHARS, count, seed=ROW_CHARS)]


def measure_training(key: str, steps: int = TRAIN_STEPS) -> dict[str, Any]:
    """Seconds per training row of ``REFERENCE_ROW_TOKENS`` tokens: the median of the LoRA steps after the first of
    the doctor's ``measure_lora_step`` (the run's defaults but steps of ``ROWS_PER_STEP`` rows, nothing held out),
    divided by the rows per step."""
    from core.lms.doctor import measure_lora_step
    from core.lms.lora import TrainParams

    wanted = {"epochs": 1, "max_steps": steps, "batch_size": ROWS_PER_STEP, "max_length": REFERENCE_ROW_TOKENS,
              "validation_fraction": 0.0, "share_prefix": False}  # whole rows, as the reference machine trained
    params = replace(TrainParams(), **{k: v for k, v in wanted.items() if k in {f.name for f in fields(TrainParams)}})
    metrics = measure_lora_step(key, reference_rows(steps * ROWS_PER_STEP), params)
    if not metrics["step_seconds"]:
        raise RuntimeError(f"the training probe timed no step after the first ({metrics['steps']} steps ran)")
    step = statistics.median(metrics["step_seconds"])
    return {**metrics, "rows_per_step": ROWS_PER_STEP, "row_seconds": round(step / ROWS_PER_STEP, 4)}


PROBES: dict[str, Callable[[str], dict[str, Any]]] = {"calls": measure_calls, "training": measure_training}


# --- presenting ------------------------------------------------------------------------------------------------


REFERENCE_NOTE = (f"The reference machine: the project's 2-core x86-64 machine the estimate's constants were measured "
                  f"on, idle ({REFERENCE_CALL_SECONDS} s per call of the classifier on a {REFERENCE_CALL_CHARS}-character "
                  f"text, 1 December 2026; {REFERENCE_ROW_SECONDS} s per training row of {REFERENCE_ROW_TOKENS} tokens). "
                  "A factor above 1: this machine is slower. `python -m core calibrate` measures from the command line.")


def _times(factor: float) -> str:
    return f"{factor:.2f}x"


def headline(cal: Calibration) -> str:
    """One sentence: what the factors mean for the estimates, or why there are none."""
    if not cal.calibrated:
        return (f"Not calibrated: {cal.reason}. The estimates use the reference machine's times (factors 1.0), "
                "which may be far from this machine's.")
    return (f"Calls here take {_times(cal.calls)} the reference machine's time and training rows "
            f"{_times(cal.training)}: estimates are scaled.")


def estimate_note(cal: Calibration) -> str:
    """The estimate's note on the calibration (``core.plan.estimate``)."""
    if not cal.calibrated:
        return f"embedded times are the reference machine's: not calibrated ({cal.reason})"
    return (f"embedded times scaled to this machine (measured {cal.measured_at}): calls x{cal.calls:.2f}, "
            f"training x{cal.training:.2f}")


def table_rows(cal: Calibration) -> list[dict[str, str]]:
    """The calibration as (what, value) rows for a table (Models page, ``calibrate``)."""
    m = cal.machine
    out = [{"what": "calls", "value": f"x{cal.calls:.2f}" + (f": {cal.call_seconds:.3f} s per {REFERENCE_CALL_CHARS}-"
            f"character call (reference {REFERENCE_CALL_SECONDS} s)" if cal.calibrated else " (not calibrated)")},
           {"what": "training", "value": f"x{cal.training:.2f}" + (f": {cal.row_seconds:.3f} s per row of "
            f"{REFERENCE_ROW_TOKENS} tokens (reference {REFERENCE_ROW_SECONDS} s)" if cal.calibrated else
            " (not calibrated)")}]
    if cal.calibrated:
        out.append({"what": "measured", "value": cal.measured_at + (f", the probe took {cal.probe_seconds} s "
                                                                    "(two child processes)" if cal.probe_seconds else "")})
    if m:
        out.append({"what": "machine", "value": f"{m.get('cpu')}, {m.get('cores')} usable cores"})
        out.append({"what": "build", "value": f"llama-cpp-python {m.get('llama_cpp_python')} ({m.get('llama_build')}), "
                                              f"torch {m.get('torch')}"})
    if cal.load is not None:
        threads = ", ".join(f"{k} {v}" for k, v in cal.threads.items() if v)
        out.append({"what": "load", "value": f"{cal.load} (1-minute load average at the start)"
                                             + (f"; threads: {threads}" if threads else "")})
    return out


def warnings(cal: Calibration) -> list[str]:
    if cal.calibrated and cal.busy:
        return [f"Measured while the machine was busy (load {cal.load} on {cal.machine.get('cores')} cores): the "
                "factors may be too high; measure again when it is idle."]
    return []


def format_calibration(cal: Calibration) -> str:
    """Plain text: the headline, the rows, any warning."""
    lines = [headline(cal), *(f"  {r['what']:<9} {r['value']}" for r in table_rows(cal)), *warnings(cal)]
    return "\n".join(lines)


if __name__ == "__main__":
    from core.lms.doctor import child_main

    sys.exit(child_main(checks=PROBES, prog="python -m core.plan.calibration"))
