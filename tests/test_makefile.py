"""The Makefile's llama-cpp-python build: portable by default, never from pip's wheel cache, NATIVE=1 kept.

Checked with ``make -n`` (what make would run) against a throwaway venv folder: nothing is built.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def make(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.fail("make is not installed (the project's entry points need it)")
    done = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_default_build_is_portable_and_bypasses_pips_wheel_cache(tmp_path):
    recipe = make("-n", "llama-wheel", f"VENV={tmp_path / 'venv'}", "HOME=" + str(tmp_path))
    assert "-portable-" in recipe and "--no-cache-dir" in recipe and "--no-binary llama-cpp-python" in recipe
    assert "-DGGML_NATIVE=OFF" in recipe
    if platform.machine() == "x86_64":
        for flag in ("-DGGML_AVX2=ON", "-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
                     "-DGGML_AMX_BF16=OFF", "-DGGML_AVX512_BF16=OFF"):
            assert flag in recipe


def test_the_install_forces_the_wheel_of_its_own_folder(tmp_path):
    recipe = make("-n", "install", f"VENV={tmp_path / 'venv'}", "HOME=" + str(tmp_path))
    assert "--force-reinstall --no-deps --no-index" in recipe
    assert "--only-binary llama-cpp-python -r requirements.txt" in recipe
    assert "-m core doctor" in recipe
    assert "--no-deps" in recipe and "-e ." in recipe  # the studio command (pyproject.toml's console script)


def test_native_is_opt_in_keyed_by_this_cpu_and_remembered(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    portable = make("llama-wheel-dir", f"VENV={venv}").strip()
    native = make("llama-wheel-dir", f"VENV={venv}", "NATIVE=1").strip()
    assert "-portable-" in portable and "-native-" in native
    assert "-DGGML_NATIVE=ON" in make("-n", "llama-wheel", f"VENV={venv}", "NATIVE=1", f"HOME={tmp_path}")
    (venv / ".llama-build").write_text("native\n")
    assert make("llama-wheel-dir", f"VENV={venv}").strip() == native  # a later `make run` keeps NATIVE=1
    assert make("llama-wheel-dir", f"VENV={venv}", "NATIVE=0").strip() == portable


def test_the_llama_version_comes_from_requirements():
    pinned = next(line.split("==")[1].split()[0] for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.startswith("llama-cpp-python=="))
    assert f"llama-cpp-python-{pinned}-portable-" in make("llama-wheel-dir")


def test_the_tests_install_the_ray_extra_that_make_install_leaves_out(tmp_path):
    venv = f"VENV={tmp_path / 'venv'}"
    assert "-r requirements-ray.txt" in make("-n", "test", venv, "HOME=" + str(tmp_path))
    assert "-r requirements-ray.txt" not in make("-n", "install", venv, "HOME=" + str(tmp_path))
    pinned = [line for line in (ROOT / "requirements-ray.txt").read_text().splitlines() if line and line[0] != "#"]
    assert pinned == [line for line in pinned if "==" in line] and any(p.startswith("ray[client]==") for p in pinned)
