"""`python -m core`: JSON on stdout, progress on stderr, one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.config.defaults import scripted_config_dict

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


def test_a_huge_value_in_a_config_is_one_short_line(tmp_path: Path) -> None:
    doc = scripted_config_dict("classifier")
    doc["name"] = "n" * 100_000
    config = tmp_path / "huge.json"
    config.write_text(json.dumps(doc))
    out = _cli("run", str(config), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid run configuration: name: ")
    assert "(100000 characters)" in lines[0] and len(lines[0]) < 500


def test_predict_rejects_bad_input_and_missing_bundle(tmp_path: Path) -> None:
    out = _cli("predict", str(tmp_path), "--input", "{not json", cwd=tmp_path)
    assert out.returncode == 2 and "--input is not valid JSON" in out.stderr
    out = _cli("predict", str(tmp_path / "missing.zip"), "--input", "{}", cwd=tmp_path)
    assert out.returncode == 2 and "is not a bundle folder or .zip file" in out.stderr


def test_export_of_unknown_run(tmp_path: Path) -> None:
    out = _cli("--db", str(tmp_path / "x.db"), "export", "42", str(tmp_path / "b"), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: no run with id 42"


STUDIO = Path(sys.executable).parent / "studio"  # what `make install` puts beside the venv's python


def _studio(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no help from the checkout
    return subprocess.run([str(STUDIO), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_studio_command_runs_a_config_from_any_folder(tmp_path: Path) -> None:
    assert STUDIO.is_file(), f"{STUDIO} is missing: `make install` installs the studio command"
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.json").write_text(json.dumps(scripted_config_dict("classifier", tag="studio")))
    out = _studio("--db", str(tmp_path / "s.db"), "run", "config.json", cwd=elsewhere)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["status"] == "finished"
    listed = _studio("models", "--json", cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert "smollm2-135m" in {entry["name"] for entry in json.loads(listed.stdout)}
    bad = _studio("app", "--port", "80", cwd=elsewhere)
    assert bad.returncode == 2 and "allowed: 1024-65535" in bad.stderr


def test_studio_app_serves_the_dashboard_on_localhost_only(tmp_path: Path) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "STUDIO_HOME": str(tmp_path / "home")}
    app = subprocess.Popen([str(STUDIO), "app", "--port", str(port)], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 90, ""
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.5)
        assert body == "ok", "studio app did not answer on localhost within 90 s"
        listening = _listening_addresses(port)
        assert listening and listening <= {"127.0.0.1", "::1"}, f"studio app listens on {listening}"
    finally:
        app.terminate()
        app.wait(timeout=30)
    time.sleep(1)
    assert not _listening_addresses(port), "the server outlived `studio app` (an orphaned Streamlit)"


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # the kernel writes each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(raw)) if width == 8 else str(ipaddress.IPv6Address(raw)))
    return found


def test_sweep_two_strategies_two_seeds(tmp_path: Path) -> None:
    doc = scripted_config_dict("classifier", tag="cli-sweep")
    doc["sweep"] = {"strategies": ["p", "p -> w"], "seeds": [0, 1]}
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps(doc))
    db = str(tmp_path / "cli.db")
    out = _cli("--db", db, "sweep", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert (summary["status"], summary["error"], summary["strategies"], summary["seeds"]) == (
        "finished", None, ["p", "p -> w"], [0, 1])
    assert (summary["child_runs"], summary["standalone_runs"]) == (2, 4)  # p is read from the p -> w runs
    for result in summary["results"]:
        assert [s["status"] for s in result["seeds"]] == ["ok", "ok"] and result["n_ok"] == 2
        assert result["mean"] == sum(s["test_score"] for s in result["seeds"]) / 2
    assert summary["best"] in ("p", "p -> w") and len(summary["comparisons"]) == 1
    assert "[sweep 1, run 2: 'p -> w' seed 1] step_start" in out.stderr  # progress went to stderr
    again = _cli("--db", db, "sweep", "--resume", str(summary["sweep_id"]), cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        "error: sweep 1 is finished; only failed, cancelled, interrupted sweeps can be resumed"]


def test_sweep_errors_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "plain.json"
    config.write_text(json.dumps(scripted_config_dict("classifier")))
    out = _cli("--db", str(tmp_path / "cli.db"), "sweep", str(config), cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "error: the configuration has no 'sweep'; add one, e.g. "
        '"sweep": {"strategies": ["p", "p -> w -> p"], "seeds": [0, 1, 2]}']
    out = _cli("--db", str(tmp_path / "cli.db"), "sweep", cwd=tmp_path)
    assert out.returncode == 2 and "give the CONFIG of a sweep, or --resume SWEEP_ID" in out.stderr
    out = _cli("--db", str(tmp_path / "cli.db"), "sweep", "--resume", "7", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: no sweep with id 7"


def test_ctrl_c_cancels_a_sweep_and_waits_for_it_to_end(tmp_path: Path) -> None:
    import signal
    import time

    doc = scripted_config_dict("classifier", tag="cli-sweep-cancel", delay=0.2)  # slow calls: time to press Ctrl-C
    doc["sweep"] = {"strategies": ["p", "w"], "seeds": [0, 1]}
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps(doc))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a background job of a non-interactive shell (CI) starts with SIGINT ignored, and Python then keeps it
    # ignored: give the command the terminal's default, as a user's Ctrl-C finds it
    cli = subprocess.Popen([sys.executable, "-m", "core", "--db", str(tmp_path / "s.db"), "sweep", str(config)],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        from core.store import Store

        store = Store(tmp_path / "s.db")
        while time.monotonic() < deadline and not any(r.status.value == "running" for r in store.list_runs()):
            time.sleep(0.3)
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 1, err[-2000:]
    summary = json.loads(out)
    assert summary["status"] == "cancelled", summary  # the sweep had ended when the command returned
    assert all(r.status.is_terminal for r in store.list_runs())


def test_models_inspect_says_what_was_found_in_a_model_folder(capsys) -> None:
    from core.cli import main
    from core.lms.lora import ensure_hf_cache

    folder = ensure_hf_cache("smollm2-135m")  # the Studio's own SmolLM2 folder: a real user-style model folder
    assert main(["models", "--inspect", str(folder), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["architecture"], found["parameters"], found["finetunable"]) == ("LlamaForCausalLM", 134515008, True)
    assert found["model"] == f"local/{found['key']}" and found["key"].startswith("smollm2-135m-hf-")
    assert found["end_of_turn"] == "<|im_end|>" and found["converts"] is True
    assert found["served_gguf"].endswith(f"local/{found['content_hash']}/model-Q4_K_M.gguf")
    assert found["spec"] == {"kind": "local", "path": str(folder)}
    assert 0 < found["memory_serve_bytes"] < found["memory_train_bytes"]
    assert main(["models", "--inspect", str(folder), "--quant", "Q8_0"]) == 0
    text = capsys.readouterr().out
    assert "architecture:  LlamaForCausalLM" in text and "about 179 MB to serve as Q8_0" in text
    assert f'"lms": {{"mine": {{"kind": "local", "path": "{folder}", "quant": "Q8_0"}}}}' in text


def test_models_inspect_of_a_bad_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 16)
    out = _cli("models", "--inspect", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path} holds pickle weights only (['pytorch_model.bin']): refused")
    assert "Traceback" not in out.stderr
    misplaced = _cli("models", "--weights", str(tmp_path), cwd=tmp_path)
    assert misplaced.returncode == 2 and "--weights and --quant go with --inspect PATH" in misplaced.stderr
