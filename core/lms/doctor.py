"""``python -m core doctor``: do the embedded models run on this CPU? Checked in child processes.

A llama.cpp (or torch) built for another CPU dies of an illegal instruction at the first
generated token, and a native fault takes the whole Python process with it. So every check runs
in its own child process (``run_check``): the parent survives whatever happens there, and turns
the child's exit into a one-line diagnosis that names the signal and the fix (``diagnose``).

The checks (``default_checks``), each in its own child so that a crash names the part that fails:

- ``generate <model>`` for each default embedded model (``catalog.DEFAULT_MODELS``): load the GGUF
  through the engine's loader and generate a few tokens; tokens/s come from llama.cpp's own
  performance counters. It also reports which CPU extensions the installed llama.cpp was compiled
  with (``llama_print_system_info``): a portable build must have no AVX-512 and no AMX code.
- ``lora-step <model>`` for the small-role default (the fine-tuned one): one real LoRA training
  step (``core.lms.lora.train_lora``, bf16 autocast like a run) on two tiny rows. The first time
  it also converts the dequantized weights into ``STUDIO_MODEL_CACHE`` (~30 s).

A child reports its measurements as JSON in the file named by ``STUDIO_DOCTOR_RESULT``. The child
entry point is ``python -m core.lms.doctor --child CHECK MODEL``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.crash import signal_of

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_ENV = "STUDIO_DOCTOR_RESULT"
GENERATE_TIMEOUT_S = 300.0
LORA_TIMEOUT_S = 900.0  # a cold weight cache is converted first; generous on a busy 2-core machine
GENERATE_TOKENS = 24
NOT_PORTABLE = ("AVX512", "AMX", "AVX_VNNI")  # compiled-in extensions a portable x86-64 build must not have

PORTABLE_FIX = "rebuild the portable build: `make clean && make install` (without NATIVE=1)"
NATIVE_FIX = "this install is the native build (NATIVE=1): go back to the portable one with `make install NATIVE=0`"
TORCH_FIX = ("if it persists, limit torch to AVX2: export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
             "(its bf16 kernels may use AVX-512/AMX instructions that this CPU or VM traps)")

_SIGNAL_CAUSES = {
    "SIGILL": "illegal instruction: the native code uses CPU instructions this machine does not run "
              "(a llama.cpp built for another CPU, e.g. with AVX-512 or AMX)",
    "SIGSEGV": "segmentation fault in native code (llama.cpp or torch)",
    "SIGBUS": "bus error in native code (llama.cpp or torch), or a truncated model file",
    "SIGABRT": "aborted by native code (a failed assertion in llama.cpp/ggml or torch)",
    "SIGFPE": "arithmetic fault in native code",
    "SIGKILL": "killed, usually by the kernel's out-of-memory killer (see `dmesg`)",
}


@dataclass(frozen=True)
class Check:
    """One check: a command run as a child process, with a time limit."""

    name: str
    argv: tuple[str, ...]
    timeout_s: float
    component: str = "llama.cpp"
    """What the check mostly exercises ("llama.cpp" or "torch"): it picks the fix to suggest."""


@dataclass(frozen=True)
class CheckResult:
    """How a check ended. ``diagnosis`` is one line when it failed, None when it passed."""

    name: str
    ok: bool
    seconds: float
    exit_code: int | None
    """The child's exit status (negative: killed by that signal); None when it ran out of time."""
    signal: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    diagnosis: str | None = None


@dataclass(frozen=True)
class DoctorReport:
    """All check results plus which llama.cpp build this environment has."""

    build: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def diagnoses(self) -> list[str]:
        return [r.diagnosis for r in self.results if r.diagnosis]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "build": self.build, "checks": [asdict(r) for r in self.results]}


def installed_build() -> str:
    """"portable" or "native" as recorded by ``make install`` in the venv, "unknown" otherwise.

    ``.venv/.llama-build`` holds the choice; older installs only have the stamp
    ``.venv/.installed-<requirements>-<build>-<flags key>``.
    """
    venv = Path(sys.prefix)
    try:
        value = (venv / ".llama-build").read_text(encoding="utf-8").strip()
    except OSError:
        stamps = [p.name.split("-") for p in venv.glob(".installed-*")]
        value = stamps[0][-2] if len(stamps) == 1 and len(stamps[0]) >= 4 else ""
    return value if value in ("portable", "native") else "unknown"


# --- running a check in a child process --------------------------------------------------------------


def diagnose(check: Check, exit_code: int | None, payload: dict | None, output_tail: str,
             build: str | None = None) -> str | None:
    """One line that says why ``check`` failed and what to do; None when it passed."""
    if exit_code == 0 and payload and payload.get("ok"):
        return None
    build = build or installed_build()
    fix = NATIVE_FIX if build == "native" else PORTABLE_FIX
    if exit_code is None:
        return (f"{check.name}: did not finish within {check.timeout_s:.0f} s and was stopped (a busy or "
                f"very slow machine, or a hang in native code); run `python -m core doctor` again, else {fix}")
    name = signal_of(exit_code)
    if name is not None:
        cause = _SIGNAL_CAUSES.get(name, "killed by a signal")
        if name == "SIGKILL":
            return (f"{check.name}: the check process died of SIGKILL ({cause}); free memory (a LoRA step "
                    f"needs about 2 GB) and run `python -m core doctor` again")
        extra = f"; {TORCH_FIX}" if check.component == "torch" else ""
        return f"{check.name}: the check process crashed with {name} ({cause}); fix: {fix}{extra}"
    if payload and payload.get("error"):
        return f"{check.name}: {payload['error']}"
    if exit_code == 0:
        return f"{check.name}: the check process ended without reporting a result (status 0)"
    last = output_tail.strip().splitlines()[-1] if output_tail.strip() else "no output"
    return f"{check.name}: the check process exited with status {exit_code} ({last[:200]})"


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def run_check(check: Check) -> CheckResult:
    """Run ``check`` in a child process (its own session) and turn how it ended into a result.

    The child's output goes to a temporary file (no pipe to fill up); its measurements come back
    as JSON in the file named by env ``STUDIO_DOCTOR_RESULT``. A child still running at
    ``timeout_s`` is killed with its process group.
    """
    with tempfile.TemporaryDirectory(prefix="studio-doctor-") as tmp:
        result_file, log_file = Path(tmp) / "result.json", Path(tmp) / "output.log"
        python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, RESULT_ENV: str(result_file), "PYTHONPATH": python_path}
        started = time.monotonic()
        exit_code: int | None
        with log_file.open("wb") as log:
            process = subprocess.Popen(check.argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                exit_code = process.wait(timeout=check.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                exit_code = None
            except BaseException:
                _kill_group(process)  # never leave a child behind (Ctrl-C, a test's time limit)
                raise
        seconds = round(time.monotonic() - started, 2)
        payload = _read_json(result_file)
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-2000:]
    diagnosis = diagnose(check, exit_code, payload, tail)
    metrics = {k: v for k, v in (payload or {}).items() if k not in ("ok", "error")}
    if diagnosis:
        logger.info("%s failed; last output of the child:\n%s", check.name, tail)
    return CheckResult(name=check.name, ok=diagnosis is None, seconds=seconds, exit_code=exit_code,
                       signal=signal_of(exit_code), metrics=metrics, diagnosis=diagnosis)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def default_checks() -> list[Check]:
    """A generation check per default embedded model, then one LoRA step on the small-role default."""
    from core.lms.catalog import DEFAULT_MODELS

    child = (sys.executable, "-m", "core.lms.doctor", "--child")
    checks = [Check(f"generate {key}", (*child, "generate", key), GENERATE_TIMEOUT_S)
              for key in dict.fromkeys(DEFAULT_MODELS.values())]
    small = DEFAULT_MODELS["small"]
    checks.append(Check(f"lora-step {small}", (*child, "lora-step", small), LORA_TIMEOUT_S, component="torch"))
    return checks


def run_doctor(checks: list[Check] | None = None,
               on_check: Callable[[Check], Any] | None = None) -> DoctorReport:
    """Run every check (``default_checks()`` by default), each in its own child process."""
    results = []
    for check in checks if checks is not None else default_checks():
        if on_check is not None:
            on_check(check)
        results.append(run_check(check))
    return DoctorReport(build=installed_build(), results=results)


# --- presenting ---------------------------------------------------------------------------------------


def describe(result: CheckResult) -> str:
    """The measurements of a check in a few words."""
    m = result.metrics
    if "generated_tokens" in m:
        features = " ".join(m.get("cpu_features", [])) or "?"
        return (f"{m['generated_tokens']} tokens at {m['generation_tok_per_s']} tok/s (prompt "
                f"{m['prompt_tok_per_s']} tok/s), load {m['load_s']} s; llama.cpp CPU code: {features}")
    if "loss" in m:
        return (f"{m['steps']} step, loss {m['loss']:.3f}, {m['seconds_per_step']} s/step, "
                f"{m['torch_threads']} torch threads, weights cache {m['weights_cache']}, "
                f"peak RSS {m['peak_rss_mb']:.0f} MB")
    return ""


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a report (``DoctorReport.to_dict()``) for a table: check, result, seconds, details."""
    rows = []
    for c in report["checks"]:
        result = CheckResult(**c)
        rows.append({"check": result.name, "result": "ok" if result.ok else (result.signal or "failed"),
                     "seconds": result.seconds, "details": describe(result) if result.ok else result.diagnosis})
    return rows


def format_report(report: DoctorReport) -> str:
    """A short plain-text table of the report."""
    rows = report_rows(report.to_dict())
    width = max([len(r["check"]) for r in rows] + [5])
    lines = [f"{'check':<{width}}  result   time    details"]
    for r in rows:
        lines.append(f"{r['check']:<{width}}  {r['result']:<7}  {r['seconds']:>5.1f} s  {r['details']}")
    lines.append(f"llama-cpp-python build: {report.build}; " + ("all checks passed" if report.ok else "FAILED"))
    return "\n".join(lines)


# --- the child side -------------------------------------------------------------------------------------


def cpu_features() -> list[str]:
    """CPU extensions the loaded llama.cpp was compiled with (its system info, ``NAME = 1`` entries)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    features = []
    for part in info.replace("\n", "|").split("|"):
        name, _, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if name and value.strip() == "1" and name not in features:
            features.append(name)
    return features


def measure_generation(key: str, tokens: int = GENERATE_TOKENS) -> dict[str, Any]:
    """Load ``key`` with the engine's loader and generate ``tokens`` tokens; llama.cpp's own timings."""
    import llama_cpp

    from core.lms import catalog
    from core.lms.embedded import LlamaEngine

    key = catalog.get_model(key).key  # LMError naming the allowed models
    started = time.monotonic()
    loaded = LlamaEngine.shared().resolve(catalog.model_name(key))
    load_s = round(time.monotonic() - started, 2)
    prompt = catalog.render_prompt(key, [{"role": "user", "content": "Count from 1 to 50, separated by commas."}])
    llama = loaded.llama
    with loaded.lock:
        llama.reset()
        llama_cpp.llama_perf_context_reset(llama.ctx)
        out = llama.create_completion(prompt=prompt, max_tokens=tokens, temperature=0.0, stop=[])
        perf = llama_cpp.llama_perf_context(llama.ctx)
    generated = int(out["usage"]["completion_tokens"])
    if generated < 1:
        raise RuntimeError(f"{key} generated no token")
    features = cpu_features()
    return {
        "model": key,
        "load_s": load_s,
        "generated_tokens": generated,
        "generation_tok_per_s": round(perf.n_eval / (perf.t_eval_ms / 1000), 1) if perf.t_eval_ms > 0 else None,
        "prompt_tok_per_s": round(perf.n_p_eval / (perf.t_p_eval_ms / 1000), 1) if perf.t_p_eval_ms > 0 else None,
        "threads": getattr(llama, "n_threads", None),
        "cpu_features": features,
        "not_portable_features": [f for f in features if f.startswith(NOT_PORTABLE)],
        "llama_cpp": str(Path(llama_cpp.__file__).parent),
    }


LORA_ROWS = [
    {"messages": [{"role": "user", "content": "Ticket: I was charged twice this month."},
                  {"role": "assistant", "content": "billing"}]},
    {"messages": [{"role": "user", "content": "Ticket: the app crashes when I save."},
                  {"role": "assistant", "content": "bug"}]},
]


def measure_lora_step(key: str, rows: list[dict] | None = None, params: Any = None) -> dict[str, Any]:
    """LoRA training steps of ``key`` as a run trains (bf16 autocast): by default one step on two tiny rows;
    ``rows`` and ``params`` (a ``TrainParams``) for more (``core.plan.calibration`` times rows of a run's length).
    From the trainer's progress callback: ``first_step_at``, the seconds to the end of the first step (it also loads
    the weights and warms up), and ``step_seconds``, the time of each later step."""
    import math

    from core.lms import catalog
    from core.lms import lora as ft

    key = catalog.get_model(key).key
    warm = (ft.hf_cache_dir(key) / "source.json").is_file()
    params = params or ft.TrainParams(epochs=1, max_steps=1, batch_size=2, max_length=64, lora_rank=4, lora_alpha=8.0)
    ticks = [time.monotonic()]
    result = ft.train_lora(key, rows or LORA_ROWS, params, merge=False,
                           progress=lambda *_: ticks.append(time.monotonic()))
    loss = result.final_loss
    if loss is None or not math.isfinite(loss):
        raise RuntimeError(f"the LoRA step of {key} gave no finite loss ({loss})")
    return {"model": key, "steps": result.steps, "loss": loss, "seconds_per_step": result.seconds_per_step,
            "step_seconds": [round(b - a, 3) for a, b in zip(ticks[1:-1], ticks[2:], strict=True)],
            "first_step_at": round(ticks[1] - ticks[0], 2) if len(ticks) > 1 else None,
            "rows": result.rows, "row_tokens": result.row_tokens, "truncated_rows": result.truncated_rows,
            "torch_threads": result.threads, "weights_cache": "warm" if warm else "converted now",
            "peak_rss_mb": result.peak_rss_mb}


def _check_portable(metrics: dict[str, Any]) -> None:
    """A build recorded as portable must not contain AVX-512/AMX code."""
    bad = metrics.get("not_portable_features") or []
    if bad and installed_build() == "portable":
        raise RuntimeError(f"the portable llama.cpp build contains {', '.join(bad)} code; {PORTABLE_FIX}")


CHILD_CHECKS: dict[str, Callable[[str], dict[str, Any]]] = {
    "generate": measure_generation,
    "lora-step": measure_lora_step,
}


def child_main(argv: list[str] | None = None, checks: dict[str, Callable[[str], dict[str, Any]]] | None = None,
               prog: str = "python -m core.lms.doctor") -> int:
    """Entry point of a check's child process; writes its JSON result to ``$STUDIO_DOCTOR_RESULT``. ``checks``:
    the measurements it may run (default ``CHILD_CHECKS``; ``core.plan.calibration`` passes its probes)."""
    checks = checks or CHILD_CHECKS
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--child", choices=sorted(checks), required=True)
    parser.add_argument("model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    result_path = os.environ.get(RESULT_ENV)
    try:
        payload = {"ok": True, **checks[args.child](args.model)}
        _check_portable(payload)
        code = 0
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        from core.errors import StudioError

        message = str(e) if isinstance(e, StudioError) else f"{type(e).__name__}: {e}"
        payload, code = {"ok": False, "error": message}, 1
    text = json.dumps(payload)
    if result_path:
        Path(result_path).write_text(text, encoding="utf-8")
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(child_main())
