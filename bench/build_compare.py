"""Portable vs native llama-cpp-python on this machine, in the same run: what does NATIVE=1 buy?

``make install`` builds llama.cpp for the x86-64 AVX2 level (portable: a wheel built here runs on
any x86-64 CPU from the last decade, and on VMs that advertise but trap AVX-512/AMX). ``make
install NATIVE=1`` compiles for this CPU instead. This benchmark measures both on one machine:

1. the native wheel: ``make llama-wheel NATIVE=1`` (compiled once into its own folder under
   ~/.cache/bettertogether-studio, ~8 min on 2 cores), installed into a temporary folder with
   ``pip install --no-deps --target``; the portable one is the project's venv;
2. ``bench/inference.py --quick`` in a child process per build (``PYTHONPATH`` puts the native
   copy first), alternating portable and native ``--rounds`` times because the machine is shared;
   each build keeps its best round. Each child reports which llama_cpp it loaded and the CPU
   extensions it was compiled with, so a mix-up shows in the output;
3. a native child that crashes (SIGILL where this CPU or VM traps an instruction the compiler
   chose) is reported with the signal, and its ratio is null.

Usage::

    python bench/build_compare.py [--quick] [--model smollm2-135m] [--rounds 2] [--native-wheels DIR]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from core.lms.doctor import signal_of  # noqa: E402

logger = logging.getLogger("bench.build_compare")
MEASURES = ("engine_calls_per_min", "raw_calls_per_min", "generation_tok_per_s", "prompt_tok_per_s")
CHILD_TIMEOUT_S = 1200


def native_wheel_dir(build: bool) -> Path:
    """The native wheel's folder (``make llama-wheel-dir NATIVE=1``); compiled first when ``build``."""
    make = ["make", "-s", "--no-print-directory", "-C", str(REPO_ROOT)]
    if build:
        logger.info("native wheel: make llama-wheel NATIVE=1 (compiles once, ~8 min on 2 cores)")
        subprocess.run([*make, "llama-wheel", "NATIVE=1"], check=True, stdout=sys.stderr)
    out = subprocess.run([*make, "llama-wheel-dir", "NATIVE=1"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def install_wheel(wheel_dir: Path, target: Path) -> None:
    wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise SystemExit(f"no llama_cpp_python wheel in {wheel_dir}: run `make llama-wheel NATIVE=1`")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-index", "--target", str(target), str(wheels[-1])], check=True)


def measure(label: str, model: str, quick: bool, python_path: str | None) -> dict[str, Any]:
    """One ``bench/inference.py`` run in a child process; its JSON, or the way it died."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if python_path:
        env["PYTHONPATH"] = python_path
    argv = [sys.executable, str(REPO_ROOT / "bench" / "inference.py"), "--model", model, *(["--quick"] if quick else [])]
    logger.info("%s build: %s", label, " ".join(argv[1:]))
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        name = signal_of(done.returncode)
        how = f"crashed with {name}" if name else f"exited with status {done.returncode}"
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the {label} build {how} ({last[:200]})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each measure's best over the runs, with the build's identity (path, CPU extensions)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "not measured"}
    out: dict[str, Any] = {m: max((r[m] for r in ok if r.get(m) is not None), default=None) for m in MEASURES}
    out.update(llama_cpp=ok[0]["llama_cpp"], cpu_features=ok[0]["cpu_features"], parse_rate=ok[0]["parse_rate"],
               runs=[{m: r.get(m) for m in MEASURES} if "error" not in r else r for r in runs])
    return out


def ratios(portable: dict[str, Any], native: dict[str, Any]) -> dict[str, float | None]:
    if "error" in portable or "error" in native:
        return dict.fromkeys(MEASURES)
    return {m: round(native[m] / portable[m], 3) if portable[m] and native[m] is not None else None
            for m in MEASURES}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="bench/inference.py --quick per build and round")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=2, help="alternating portable/native runs per build")
    parser.add_argument("--native-wheels", type=Path, default=None,
                        help="folder holding the native wheel (default: make's, compiled if missing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    wheel_dir = args.native_wheels or native_wheel_dir(build=True)
    runs: dict[str, list[dict[str, Any]]] = {"portable": [], "native": []}
    with tempfile.TemporaryDirectory(prefix="llama-native-") as target:
        install_wheel(wheel_dir, Path(target))
        for _ in range(args.rounds):
            runs["portable"].append(measure("portable", args.model, args.quick, None))
            runs["native"].append(measure("native", args.model, args.quick, target))
    portable, native = best(runs["portable"]), best(runs["native"])
    if "error" not in native and native["llama_cpp"] == portable.get("llama_cpp"):
        native = {"error": f"the native child loaded the venv's llama_cpp ({native['llama_cpp']}), not the copy"}
    result = {
        "model": args.model,
        "quick": args.quick,
        "rounds": args.rounds,
        "cpu": cpu_name(),
        "threads": os.environ.get("STUDIO_LLAMA_THREADS", "2"),
        "native_wheel": str(wheel_dir),
        "portable": portable,
        "native": native,
        "native_vs_portable": ratios(portable, native),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
