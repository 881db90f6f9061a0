"""``python -m core doctor``: a check that crashes in its child process gives a one-line diagnosis.

The crash tests run tiny child commands through ``core.lms.doctor.run_check``, the function that runs
the real checks: a real illegal instruction (``ud2`` on x86-64), a real segfault (reading address
0), and the SIGKILL the kernel's OOM killer sends.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time

import pytest

from core import cli
from core.lms import doctor
from core.lms.doctor import Check, DoctorReport, diagnose, run_check, signal_of

# Executes ud2, the instruction defined to raise #UD: the kernel sends SIGILL as for AMX on a VM
# that traps it. Elsewhere (or where W+X pages are refused) the child sends itself SIGILL.
ILLEGAL_INSTRUCTION = """
import ctypes, mmap, os, platform, signal
try:
    assert platform.machine() in ("x86_64", "AMD64")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(b"\\x0f\\x0b")
    ctypes.CFUNCTYPE(None)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
except Exception:
    pass
os.kill(os.getpid(), signal.SIGILL)
"""
SEGFAULT = "import ctypes; ctypes.string_at(0)"
OOM_KILL = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


def child(code: str, name: str = "generate fake-model", timeout_s: float = 60, component: str = "llama.cpp") -> Check:
    return Check(name, (sys.executable, "-c", code), timeout_s, component)


def writes_result(payload: dict, exit_code: int = 0) -> str:
    return (f"import json, os, sys; open(os.environ[{doctor.RESULT_ENV!r}], 'w').write(json.dumps({payload!r})); "
            f"sys.exit({exit_code})")


@pytest.mark.parametrize(
    ("code", "signal_name", "words"),
    [
        (ILLEGAL_INSTRUCTION, "SIGILL", ["crashed with SIGILL", "illegal instruction", "make clean && make install"]),
        (SEGFAULT, "SIGSEGV", ["crashed with SIGSEGV", "segmentation fault", "make clean && make install"]),
        (OOM_KILL, "SIGKILL", ["died of SIGKILL", "out-of-memory", "free memory"]),
    ],
)
def test_a_crashed_check_is_diagnosed_in_one_line(code, signal_name, words, monkeypatch):
    monkeypatch.setattr(doctor, "installed_build", lambda: "portable")
    result = run_check(child(code))
    assert not result.ok
    assert result.signal == signal_name
    assert result.exit_code < 0 and signal_of(result.exit_code) == signal_name
    assert result.diagnosis.startswith("generate fake-model: ")
    assert "\n" not in result.diagnosis
    for word in words:
        assert word in result.diagnosis


def test_the_illegal_instruction_is_a_real_one_on_x86_64():
    code = ILLEGAL_INSTRUCTION.replace("os.kill(", "print('fallback', flush=True); os.kill(")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -4
    assert ("fallback" in done.stdout) == (platform.machine() != "x86_64")


def test_a_native_build_crash_points_back_to_the_portable_build():
    line = diagnose(child("pass"), -4, None, "", build="native")
    assert "SIGILL" in line and "make install NATIVE=0" in line


def test_a_torch_crash_also_names_the_torch_limits():
    line = diagnose(child("pass", name="lora-step m", component="torch"), -4, None, "", build="portable")
    assert "make clean && make install" in line and "ONEDNN_MAX_CPU_ISA=AVX2" in line


def test_a_check_past_its_time_limit_is_killed_and_diagnosed():
    started = time.monotonic()
    result = run_check(child("import time; time.sleep(60)", timeout_s=1))
    assert time.monotonic() - started < 30
    assert not result.ok and result.exit_code is None and result.signal is None
    assert "did not finish within 1 s" in result.diagnosis


def test_an_error_reported_by_the_child_is_its_diagnosis():
    result = run_check(child(writes_result({"ok": False, "error": "embedded model 'x' is not installed"}, 1)))
    assert not result.ok and result.exit_code == 1
    assert result.diagnosis == "generate fake-model: embedded model 'x' is not installed"


def test_an_exit_without_a_result_names_the_status_and_last_output():
    result = run_check(child("import sys; print('something broke'); sys.exit(3)"))
    assert result.diagnosis == "generate fake-model: the check process exited with status 3 (something broke)"


def test_a_passing_check_returns_its_measurements():
    result = run_check(child(writes_result({"ok": True, "steps": 1, "loss": 2.5})))
    assert result.ok and result.diagnosis is None and result.exit_code == 0
    assert result.metrics == {"steps": 1, "loss": 2.5}


def test_signal_numbers_from_a_shell_wrapper_are_named():
    assert signal_of(132) == "SIGILL" and signal_of(139) == "SIGSEGV" and signal_of(-9) == "SIGKILL"
    assert signal_of(0) is None and signal_of(1) is None and signal_of(None) is None


def test_the_child_entry_point_reports_an_unknown_model_in_one_line():
    check = Check("generate nope", (sys.executable, "-m", "core.lms.doctor", "--child", "generate", "nope"), 120)
    result = run_check(check)
    assert not result.ok and result.exit_code == 1
    assert "unknown embedded model 'nope'; allowed models are: gemma3-270m, smollm2-135m" in result.diagnosis


def test_default_checks_cover_every_default_model_and_one_lora_step():
    from core.lms.catalog import DEFAULT_MODELS

    names = [c.name for c in doctor.default_checks()]
    assert names == [*(f"generate {k}" for k in dict.fromkeys(DEFAULT_MODELS.values())),
                     f"lora-step {DEFAULT_MODELS['small']}"]


def test_the_installed_llama_cpp_is_portable():
    """The build this venv records as portable has no AVX-512/AMX code (what a VM may trap)."""
    features = doctor.cpu_features()
    assert features, "llama.cpp reported no CPU features"
    if platform.machine() == "x86_64":
        assert "AVX2" in features
    if doctor.installed_build() == "portable":
        assert not [f for f in features if f.startswith(doctor.NOT_PORTABLE)], features


# --- the CLI ---------------------------------------------------------------------------------------------


def test_cli_doctor_exits_0_and_prints_a_table_when_every_check_passes(monkeypatch, capsys):
    ok = child(writes_result({"ok": True, "steps": 1, "loss": 2.5, "seconds_per_step": 1.5, "torch_threads": 2,
                              "weights_cache": "warm", "peak_rss_mb": 900.0}), name="lora-step fake")
    monkeypatch.setattr(doctor, "default_checks", lambda: [ok])
    assert cli.main(["doctor", "--no-calibrate"]) == 0  # the calibration after it: tests/plan/test_calibration.py
    out, err = capsys.readouterr()
    assert "lora-step fake" in out and "loss 2.500" in out and "all checks passed" in out
    assert "checking lora-step fake" in err and "error:" not in err


def test_cli_doctor_exits_1_with_the_diagnosis_when_a_check_crashes(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "default_checks", lambda: [child("pass", name="generate a"), child(SEGFAULT)])
    assert cli.main(["doctor", "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is False
    assert [c["ok"] for c in report["checks"]] == [False, False]  # "pass" reports no result: not ok either
    assert "ended without reporting a result" in report["checks"][0]["diagnosis"]
    assert report["checks"][1]["signal"] == "SIGSEGV"
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "crashed with SIGSEGV" in errors[1]


def test_report_rows_for_the_models_page():
    report = DoctorReport("portable", [run_check(child(OOM_KILL))]).to_dict()
    rows = doctor.report_rows(report)
    assert rows[0]["check"] == "generate fake-model" and rows[0]["result"] == "SIGKILL"
    assert "out-of-memory" in rows[0]["details"]


# --- the real thing ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_doctor_passes_on_this_machine():
    """Generation on every default model and one LoRA step, each in its child process (1-2 min; more
    the first time, when the dequantized weights are converted into the shared model cache)."""
    done = subprocess.run([sys.executable, "-m", "core", "doctor", "--json", "--no-calibrate"], capture_output=True,
                          text=True, timeout=840)  # the calibration: tests/plan/test_calibration.py
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] is True
    generate = [c for c in report["checks"] if c["name"].startswith("generate ")]
    lora = [c for c in report["checks"] if c["name"].startswith("lora-step ")]
    assert generate and len(lora) == 1
    for check in generate:
        assert check["metrics"]["generated_tokens"] >= 1 and check["metrics"]["generation_tok_per_s"] > 0
    assert math.isfinite(lora[0]["metrics"]["loss"]) and lora[0]["metrics"]["steps"] == 1


# --- the Models page ------------------------------------------------------------------------------------------


def test_models_page_runs_the_doctor_only_on_the_button_and_keeps_the_result(monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    calls = []

    def checks() -> list[Check]:
        calls.append(1)
        return [child(SEGFAULT)]

    monkeypatch.setattr(doctor, "default_checks", checks)
    at = AppTest.from_file(str(root / "pages" / "models.py"), default_timeout=60)
    at.run()
    assert not at.exception and calls == []  # never on render
    button = next(b for b in at.button if b.label.startswith("Check that the embedded models run"))
    button.click().run()
    assert not at.exception and calls == [1]
    assert any("crashed with SIGSEGV" in e.value for e in at.error)
    assert at.session_state["doctor_report"]["ok"] is False
    at.run()  # a later render shows the kept result without running the checks again
    assert calls == [1] and any("crashed with SIGSEGV" in e.value for e in at.error)
