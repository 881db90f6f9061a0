"""`python -m core`: JSON on stdout, progress on stderr, one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.defaults import scripted_config_dict

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_run_export_predict(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps(scripted_config_dict("classifier", tag="cli")))
    db = str(tmp_path / "cli.db")
    out = _cli("--db", db, "run", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["status"] == "finished"
    assert [r["strategy"] for r in summary["rounds"]] == ["", "p", "p -> w", "p -> w -> p"]
    assert summary["best_score"] >= summary["baseline_score"]
    assert set(summary["test_scores"]) == {"baseline", "best"}
    assert "step_start" in out.stderr  # progress went to stderr
    bundle = tmp_path / "bundle"
    exported = _cli("--db", db, "export", str(summary["run_id"]), str(bundle), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert (bundle / "manifest.json").is_file()
    predicted = _cli("predict", str(bundle), "--input", json.dumps({"text": "I love it, great value."}), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert set(json.loads(predicted.stdout)) >= {"label"}


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    out = _cli("run", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"error: configuration file not found: {tmp_path / 'nope.json'}"]


def test_invalid_config_is_one_line(tmp_path: Path) -> None:
    doc = scripted_config_dict("classifier")
    doc["strategy"] = "p -> q"
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(doc))
    out = _cli("run", str(config), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'q'" in lines[0] and "Traceback" not in out.stderr


def test_predict_rejects_bad_input_and_missing_bundle(tmp_path: Path) -> None:
    out = _cli("predict", str(tmp_path), "--input", "{not json", cwd=tmp_path)
    assert out.returncode == 2 and "--input is not valid JSON" in out.stderr
    out = _cli("predict", str(tmp_path / "missing.zip"), "--input", "{}", cwd=tmp_path)
    assert out.returncode == 2 and "is not a bundle folder or .zip file" in out.stderr


def test_export_of_unknown_run(tmp_path: Path) -> None:
    out = _cli("--db", str(tmp_path / "x.db"), "export", "42", str(tmp_path / "b"), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: no run with id 42"
