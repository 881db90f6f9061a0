"""This machine's calibration: the estimate scales the embedded times by the cached factors, never measures; the cache
is keyed by the build and the machine, and a missing, stale or corrupt one is "not calibrated" (factors 1.0) with
the reason. The probes are faked at their seam (``probe_checks``: child processes that report fixed timings), but
for one real call probe of a single call."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from core import cli
from core.config.defaults import default_config_dict, scripted_config_dict
from core.config.schema import parse_config
from core.lms import doctor
from core.lms.doctor import Check
from core.plan import calibration
from core.plan.estimate import SECONDS_PER_TRAIN_ROW, TRAINED_ROW_TOKENS, estimate

ROOT = Path(__file__).resolve().parents[2]
KEY = {"llama_cpp_python": "0.3.36", "llama_build": "portable", "torch": "2.13.0+cpu", "cpu": "Test CPU", "cores": 2}


def reports(payload: dict, name: str) -> Check:
    """A probe's child process that reports ``payload`` as its measurement."""
    code = (f"import json, os; open(os.environ[{doctor.RESULT_ENV!r}], 'w').write(json.dumps("
            f"{ {'ok': True, **payload}!r}))")
    return Check(name, (sys.executable, "-c", code), 60)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fake probes: calls at 1.45x the reference (0.538 s), training rows at 1.3x (0.78 s); the probes run are
    listed. The machine's key is ``KEY`` (set ``calibration.machine_key`` again to change it)."""
    ran: list[str] = []

    def checks() -> list[Check]:
        ran.append("probes")
        return [reports({"median_s": 0.538, "seconds": [0.538] * 8, "threads": 2}, "calibrate calls fake"),
                reports({"row_seconds": 0.78, "step_seconds": [1.56, 1.56], "torch_threads": 2}, "calibrate training")]

    monkeypatch.setattr(calibration, "probe_checks", checks)
    monkeypatch.setattr(calibration, "machine_key", lambda: dict(KEY))
    return ran


def calibrated(monkeypatch: pytest.MonkeyPatch, calls: float, training: float) -> None:
    found = calibration.Calibration(calls=calls, training=training, calibrated=True, measured_at="now")
    monkeypatch.setattr(calibration, "current", lambda: found)


def test_the_reference_figures_are_the_estimates_and_the_benchmarks():
    """The training reference is the estimate's constant; the call reference the bench's median at 150 characters
    (bench/results/prompt_length.json), on the bench's own texts."""
    assert calibration.REFERENCE_ROW_SECONDS == SECONDS_PER_TRAIN_ROW["embedded"]
    assert calibration.REFERENCE_ROW_TOKENS == TRAINED_ROW_TOKENS
    bench = json.loads((ROOT / "bench" / "results" / "prompt_length.json").read_text())
    assert bench["median_seconds"][str(calibration.REFERENCE_CALL_CHARS)] == calibration.REFERENCE_CALL_SECONDS
    assert bench["calls_per_length"] == calibration.CALLS
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        texts = importlib.import_module("prompt_length").texts
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert calibration.reference_texts(150, 8, seed=150) == texts(150, 8, seed=150)


def test_the_estimate_scales_every_embedded_time_by_the_factors(monkeypatch):
    config = parse_config(default_config_dict())  # support triage, p -> w -> p, on the embedded models
    plain = estimate(config)
    assert any("not calibrated (not measured on this machine yet" in n for n in plain.notes)
    calibrated(monkeypatch, 2.0, 2.0)
    both = estimate(config)
    assert both.seconds == pytest.approx(2 * plain.seconds)  # calls, training, export: all of them
    assert [s.seconds for s in both.steps] == pytest.approx([2 * s.seconds for s in plain.steps])
    assert any("scaled to this machine" in n and "calls x2.00, training x2.00" in n for n in both.notes)
    calibrated(monkeypatch, 2.0, 1.0)
    calls = estimate(config)
    assert calls.steps[0].seconds == pytest.approx(2 * plain.steps[0].seconds)  # the baseline: calls only
    weight = [i for i, s in enumerate(plain.steps) if s.train_steps][0]
    calibrated(monkeypatch, 1.0, 3.0)
    training = estimate(config)
    assert training.steps[0].seconds == pytest.approx(plain.steps[0].seconds)
    # the weight step's calls are the difference between x2 calls and x1; the rest (training, export) triples
    step_calls = calls.steps[weight].seconds - plain.steps[weight].seconds
    assert training.steps[weight].seconds == pytest.approx(step_calls + 3 * (plain.steps[weight].seconds - step_calls))
    assert calls.calls == training.calls == plain.calls


def test_scripted_and_hosted_lms_are_not_scaled(monkeypatch):
    config = parse_config(scripted_config_dict("analyze_classify"))
    plain = estimate(config)
    calibrated(monkeypatch, 3.0, 3.0)
    assert estimate(config).seconds == plain.seconds


def test_the_estimate_reads_the_cache_the_probe_wrote(probes, studio_home):
    config = parse_config(default_config_dict())
    plain = estimate(config)
    cal, results = calibration.measure()
    assert [r.ok for r in results] == [True, True] and probes == ["probes"]
    assert cal.calibrated and (cal.calls, cal.training) == (1.45, 1.3)
    record = json.loads((studio_home / "calibration.json").read_text())
    assert record["key"] == KEY and record["calls"]["median_s"] == 0.538 and record["training"]["row_seconds"] == 0.78
    scaled = estimate(config)
    assert plain.steps[0].seconds * 1.45 == pytest.approx(scaled.steps[0].seconds)
    assert scaled.seconds > plain.seconds * 1.3
    assert calibration.headline(cal) == ("Calls here take 1.45x the reference machine's time and training rows "
                                         "1.30x: estimates are scaled.")


def test_a_changed_build_makes_the_cache_stale_and_the_doctor_measures_again(probes, monkeypatch):
    calibration.measure()
    assert calibration.current().calibrated
    monkeypatch.setattr(calibration, "machine_key", lambda: {**KEY, "llama_build": "native"})
    stale = calibration.current()
    assert not stale.calibrated and (stale.calls, stale.training) == (1.0, 1.0)
    assert "measured for another machine or build (llama_build 'portable' -> 'native')" in stale.reason
    cal, results = calibration.ensure()  # what `python -m core doctor` does
    assert len(results) == 2 and probes == ["probes", "probes"]
    assert cal.calibrated and cal.machine["llama_build"] == "native"
    assert calibration.ensure() == (cal, []) and len(probes) == 2  # current: nothing measured


@pytest.mark.parametrize("text", ["{not json", '{"format": 1, "key": {}, "calls": {"median_s": -1}, '
                                  '"training": {"row_seconds": 0.7}}', '[1, 2]', ""])
def test_a_corrupt_cache_is_not_calibrated_with_a_message(text, studio_home):
    studio_home.mkdir(parents=True, exist_ok=True)
    (studio_home / "calibration.json").write_text(text)
    cal = calibration.current()
    assert not cal.calibrated and (cal.calls, cal.training) == (1.0, 1.0)
    assert "calibration.json is unreadable" in cal.reason and "measures it again" in cal.reason
    assert calibration.headline(cal).startswith("Not calibrated: the cached calibration")
    notes = estimate(parse_config(default_config_dict())).notes
    assert any("not calibrated (the cached calibration" in n for n in notes)


def test_a_failed_probe_leaves_the_cache_as_it_was(probes, monkeypatch):
    before, _ = calibration.measure()
    crash = Check("calibrate training fake", (sys.executable, "-c", "import ctypes; ctypes.string_at(0)"), 60,
                  component="torch")
    monkeypatch.setattr(calibration, "probe_checks", lambda: [crash])
    after, results = calibration.measure()
    assert after == before and "crashed with SIGSEGV" in results[0].diagnosis


def test_cli_calibrate_and_doctor(probes, monkeypatch, capsys):
    assert cli.main(["calibrate"]) == 0
    out, err = capsys.readouterr()
    assert "Calls here take 1.45x" in out and "0.538 s per 150-character call (reference 0.371 s)" in out
    assert "checking calibrate calls fake" in err
    monkeypatch.setattr(doctor, "default_checks", lambda: [reports({"steps": 1}, "lora-step fake")])
    assert cli.main(["doctor", "--json"]) == 0  # the cache is current: the doctor only reads it
    assert json.loads(capsys.readouterr().out)["calibration"]["calls"] == 1.45 and len(probes) == 1
    monkeypatch.setattr(calibration, "machine_key", lambda: {**KEY, "torch": "2.14.0"})
    assert cli.main(["doctor"]) == 0 and len(probes) == 2  # a new build: measured again
    assert "all checks passed\nCalls here take 1.45x" in capsys.readouterr().out
    monkeypatch.setattr(calibration, "machine_key", lambda: {**KEY, "torch": "2.15.0"})
    assert cli.main(["doctor", "--no-calibrate"]) == 0 and len(probes) == 2
    assert "Calls here take" not in capsys.readouterr().out


@pytest.mark.slow
def test_the_real_call_probe_times_one_call():
    """The real call probe, one call (its child runs eight): the classifier's Predict on SmolLM2."""
    measured = calibration.measure_calls("smollm2-135m", calls=1)
    assert measured["model"] == "smollm2-135m" and measured["chars"] == 150
    assert len(measured["seconds"]) == 1 and 0 < measured["median_s"] < 30


def test_a_failed_calibration_is_a_warning_of_the_doctor_not_a_failed_check(probes, monkeypatch, capsys):
    crash = Check("calibrate calls fake", (sys.executable, "-c", "import ctypes; ctypes.string_at(0)"), 60)
    monkeypatch.setattr(calibration, "probe_checks", lambda: [crash])
    monkeypatch.setattr(doctor, "default_checks", lambda: [reports({"steps": 1}, "lora-step fake")])
    assert cli.main(["doctor"]) == 0
    out, err = capsys.readouterr()
    assert "all checks passed" in out and "Not calibrated: not measured on this machine yet" in out
    assert "warning: the calibration failed, the estimates stay uncalibrated: calibrate calls fake: the check " \
           "process crashed with SIGSEGV" in err
    assert cli.main(["calibrate"]) == 1  # asked for alone, it fails
    assert "error: calibrate calls fake: the check process crashed with SIGSEGV" in capsys.readouterr().err


def test_the_machine_key_tells_cpus_apart_by_their_precision_flags_without_importing_torch():
    """Every estimate reads the key (in the app's process): it names the trainer's version and the CPU flags its
    precision turns on (an AVX2-only "AMD EPYC" trains ~20x slower than one with bfloat16 instructions), and it
    does not import torch to find them."""
    import subprocess

    code = ("import json, sys; from core.plan import calibration; key = calibration.machine_key(); "
            "print(json.dumps([key['trainer'], key['cpu_flags'], 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(calibration.__file__).resolve().parents[2])
    trainer, flags, torch_imported = json.loads(done.stdout.splitlines()[-1])
    assert trainer == calibration.TRAINER and torch_imported is False
    assert set(flags.split()) <= set(calibration.PRECISION_FLAGS)
