"""Command line: run a configuration headless, export a run, predict with a bundle, list models.

    python -m core run CONFIG.json        progress on stderr, the run summary as JSON on stdout
    python -m core resume RUN_ID          continue a failed, cancelled or interrupted run
    python -m core sweep CONFIG.json      the config's sweep (strategies x seeds): summary JSON on stdout
    python -m core sweep --resume ID      continue a failed, cancelled or interrupted sweep
    python -m core export RUN_ID OUT      OUT a folder or a .zip
    python -m core report RUN_ID OUT.html one self-contained HTML report (opens offline)
    python -m core sweep-report ID OUT.html  a sweep's report: which strategy won, by how much, how sure
    python -m core predict BUNDLE --input '{"field": "..."}'
    python -m core models [--json]
    python -m core models --inspect PATH [--weights DIR] [--json]   check your own model before using it
    python -m core doctor [--json]       do the embedded models run on this CPU? (child processes); then measures
                                         this machine's speed for the estimate if it is not cached for this build
    python -m core calibrate [--json]    measure this machine's speed for the estimate again (a probe, ~30 s)
    python -m core app [--port 8501]     start the dashboard on localhost

`make install` also installs these as the `studio` command (``studio run CONFIG.json``), which works
from any folder.

Any failure exits non-zero with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from core.errors import StudioError, shown
from core.store.secrets import install_log_redaction, redact

logger = logging.getLogger("core.cli")


def _quiet_libraries() -> None:
    for name in ("dspy", "LiteLLM", "litellm", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from core.lms.native_log import NATIVE_LOGGER

    # llama.cpp's own lines (a model loaded by `predict`): its errors reach the user inside the one-line LMError
    logging.getLogger(NATIVE_LOGGER).setLevel(logging.CRITICAL)


def _summary(store: Any, run_id: int) -> dict[str, Any]:
    run = store.get_run(run_id)
    return {
        "run_id": run.id,
        "status": run.status.value,
        "error": run.error,
        "baseline_score": run.baseline_score,
        "best_score": run.best_score,
        "best_strategy": run.best_strategy,
        "test_scores": {"baseline": run.test_baseline_score, "best": run.test_best_score},
        "rounds": [
            {"index": r.index, "strategy": r.strategy, "score": r.score, "eval_failed": r.eval_failed,
             "is_best": r.is_best}
            for r in store.list_rounds(run_id)
        ],
    }


def _show_progress(store: Any, run_id: int, seen: int) -> int:
    for event in store.list_events(run_id, since_id=seen):
        seen = event.id
        if event.kind != "progress":
            print(f"[run {run_id}] {event.kind}: {event.message}", file=sys.stderr, flush=True)
    return seen


def cmd_run(args: argparse.Namespace) -> int:
    from core.config.schema import load_config
    from core.paths import db_path
    from core.run import get_manager

    config = load_config(args.config)
    if config.sweep is not None:
        print("note: this configuration has a 'sweep'; `run` runs its strategy once (`sweep` runs the sweep)",
              file=sys.stderr)
    manager = get_manager(args.db or db_path())
    # DSPy's optimizers print to stdout: keep stdout for the JSON summary only.
    with contextlib.redirect_stdout(sys.stderr):
        run_id = manager.start(config, base_dir=Path(args.config).resolve().parent)
    return _follow(manager, run_id)


def cmd_resume(args: argparse.Namespace) -> int:
    from core.paths import db_path
    from core.run import get_manager

    manager = get_manager(args.db or db_path())
    with contextlib.redirect_stdout(sys.stderr):
        run_id = manager.resume(args.run_id)
    return _follow(manager, run_id)


def _follow(manager: Any, run_id: int) -> int:
    """Show a run's progress on stderr until it ends (Ctrl-C cancels it); its summary as JSON on stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        seen = 0
        try:
            while not manager.wait(run_id, timeout=0.5):
                seen = _show_progress(manager.store, run_id, seen)
        except KeyboardInterrupt:
            print("cancelling: the best program so far is kept...", file=sys.stderr)
            manager.cancel(run_id)
            manager.wait(run_id)
        _show_progress(manager.store, run_id, seen)
    summary = _summary(manager.store, run_id)
    print(json.dumps(summary, indent=2))
    return 0 if summary["status"] == "finished" else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from core.config.schema import load_config
    from core.paths import db_path
    from core.run.sweep import get_sweep_manager

    if (args.config is None) == (args.resume is None):
        raise StudioError("give the CONFIG of a sweep, or --resume SWEEP_ID (not both)")
    manager = get_sweep_manager(args.db or db_path())
    with contextlib.redirect_stdout(sys.stderr):
        if args.resume is not None:
            sweep_id = manager.resume(args.resume)
        else:
            sweep_id = manager.start(load_config(args.config), base_dir=Path(args.config).resolve().parent)
    return _follow_sweep(manager, sweep_id)


def _sweep_progress(store: Any, sweep_id: int, seen: dict[int, int]) -> None:
    for child in store.sweep_children(sweep_id):
        if child.run_id is None:
            continue
        for event in store.list_events(child.run_id, since_id=seen.get(child.run_id, 0)):
            seen[child.run_id] = event.id
            if event.kind != "progress":
                print(f"[sweep {sweep_id}, run {child.run_id}: '{child.strategy}' seed {child.seed}] {event.kind}: "
                      f"{event.message}", file=sys.stderr, flush=True)


def _follow_sweep(manager: Any, sweep_id: int) -> int:
    """A sweep's progress on stderr until it ends (Ctrl-C cancels it); its summary as JSON on stdout."""
    from core.evidence.sweep import summarize_sweep

    store = manager.store
    seen: dict[int, int] = {}
    with contextlib.redirect_stdout(sys.stderr):
        try:
            while not manager.wait(sweep_id, timeout=0.5):
                _sweep_progress(store, sweep_id, seen)
        except KeyboardInterrupt:
            print("cancelling the sweep: the finished runs are kept...", file=sys.stderr)
            manager.cancel(sweep_id)
            # not manager.wait: a join interrupted by Ctrl-C leaves Python thinking the thread has stopped
            while not store.sweep_status(sweep_id).is_terminal:
                time.sleep(0.5)
        _sweep_progress(store, sweep_id, seen)
    sweep = store.get_sweep(sweep_id)
    summary = sweep.summary or summarize_sweep(store, sweep_id)
    print(json.dumps({**summary.to_json(), "status": sweep.status.value, "error": sweep.error}, indent=2))
    return 0 if sweep.status.value == "finished" else 1


def cmd_export(args: argparse.Namespace) -> int:
    from core.bundles.export import export_run
    from core.paths import db_path
    from core.store import Store

    store = Store(args.db or db_path())
    out = export_run(store, args.run_id, args.out)
    print(json.dumps({"run_id": args.run_id, "bundle": str(out)}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from core.evidence.report import write_report
    from core.paths import db_path
    from core.store import Store

    out = write_report(Store(args.db or db_path()), args.run_id, args.out)
    print(json.dumps({"run_id": args.run_id, "report": str(out)}))
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from core.evidence.sweep_report import write_sweep_report
    from core.paths import db_path
    from core.store import Store

    out = write_sweep_report(Store(args.db or db_path()), args.sweep_id, args.out)
    print(json.dumps({"sweep_id": args.sweep_id, "report": str(out)}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from core.bundles.export import load_bundle, predict

    try:
        inputs = json.loads(args.input)
    except json.JSONDecodeError as e:
        raise StudioError(f"--input is not valid JSON: {e.msg} (e.g. '{{\"document\": \"...\"}}')") from e
    if not isinstance(inputs, dict):
        raise StudioError("--input must be a JSON object of input fields, e.g. '{\"document\": \"...\"}'")
    program = load_bundle(args.bundle, allow_user_code=args.allow_user_code, trusted_endpoints=args.trust_endpoint)
    with contextlib.redirect_stdout(sys.stderr):
        outputs = predict(program, inputs)
    print(json.dumps(outputs, ensure_ascii=False, default=str))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from core.lms.catalog import list_models

    if args.inspect is not None:
        return _inspect_model(args)
    if args.weights is not None or args.quant is not None:
        raise StudioError("--weights and --quant go with --inspect PATH (the model to check)")
    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
    else:
        for m in models:
            flags = ", ".join(f"default {r}" for r in m.get("default_for", []))
            print(f"{m['name']:<16} {m['size_mb']:>5} MB  installed={m['installed']}  {flags}")
    return 0


def _inspect_model(args: argparse.Namespace) -> int:
    """What was found in a model on disk (``--inspect PATH``), before it is used; nothing converted."""
    from core.lms.local import DEFAULT_QUANT
    from core.views.local_model import inspect_report, report_text

    report = inspect_report(args.inspect, args.weights, args.quant or DEFAULT_QUANT)
    print(json.dumps(report.to_json(), indent=2) if args.json else report_text(report))
    return 0


def _announce(check: Any) -> None:
    print(f"checking {check.name} (in a child process)...", file=sys.stderr, flush=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    """The checks; once they pass, this machine's calibration unless it is cached for this build (or
    ``--no-calibrate``). A failed calibration is a warning (the estimate stays uncalibrated), not a failed check."""
    from core.lms.doctor import format_report, run_doctor
    from core.plan import calibration

    report = run_doctor(on_check=_announce)
    output, text, warnings = report.to_dict(), format_report(report), []
    if report.ok and not args.no_calibrate:
        cal, probes = calibration.ensure(on_probe=_announce)
        output["calibration"] = cal.to_json()
        text += "\n" + calibration.format_calibration(cal)
        warnings = [r.diagnosis for r in probes if r.diagnosis]
    print(json.dumps(output, indent=2) if args.json else text)
    for line in report.diagnoses():
        print(f"error: {line}", file=sys.stderr)
    for line in warnings:
        print(f"warning: the calibration failed, the estimates stay uncalibrated: {line}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure this machine's speed for the estimate (``core.plan.calibration``) and cache it."""
    from core.plan import calibration

    cal, probes = calibration.measure(on_probe=_announce)
    print(json.dumps(cal.to_json(), indent=2) if args.json else calibration.format_calibration(cal))
    failed = [r.diagnosis for r in probes if r.diagnosis]
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 0 if not failed else 1


def cmd_app(args: argparse.Namespace) -> int:
    """Start the dashboard (Streamlit) on localhost, whatever the working folder. The process becomes
    Streamlit (``exec``), so a signal that stops ``studio app`` stops the server, never orphans it."""
    import os

    from core.paths import REPO_ROOT

    argv = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app.py"), "--server.address", "localhost",
            "--server.port", str(args.port), "--server.headless", "true"]
    os.chdir(REPO_ROOT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached: execv replaces this process or raises


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {shown(text)} is not a number; allowed: 1024-65535") from None
    if not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range; allowed: 1024-65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name if Path(sys.argv[0]).name == "studio"
                                     else "python -m core", description="BetterTogether Studio, headless")
    parser.add_argument("--db", help="database file (default: $STUDIO_HOME/studio.db)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages too")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a configuration")
    run.add_argument("config")
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser("resume", help="continue a failed, cancelled or interrupted run from its last round")
    resume.add_argument("run_id", type=int)
    resume.set_defaults(func=cmd_resume)
    sweep = sub.add_parser("sweep", help="run the config's sweep: each strategy with each seed, as one job")
    sweep.add_argument("config", nargs="?", help="a configuration with a 'sweep'")
    sweep.add_argument("--resume", type=int, metavar="SWEEP_ID", help="continue a failed, cancelled or interrupted sweep")
    sweep.set_defaults(func=cmd_sweep)
    export = sub.add_parser("export", help="export a run as a bundle (folder, or .zip)")
    export.add_argument("run_id", type=int)
    export.add_argument("out")
    export.set_defaults(func=cmd_export)
    report = sub.add_parser("report", help="write a run's self-contained HTML report")
    report.add_argument("run_id", type=int)
    report.add_argument("out", help="the .html file to write")
    report.set_defaults(func=cmd_report)
    sweep_report = sub.add_parser("sweep-report", help="write a sweep's self-contained HTML report (the verdict, "
                                  "the strategies x seeds table, the chart, example by example)")
    sweep_report.add_argument("sweep_id", type=int)
    sweep_report.add_argument("out", help="the .html file to write")
    sweep_report.set_defaults(func=cmd_sweep_report)
    pred = sub.add_parser("predict", help="run one input through a bundle")
    pred.add_argument("bundle")
    pred.add_argument("--input", required=True, help="JSON object of input fields")
    pred.add_argument("--allow-user-code", action="store_true", help="allow a bundle of your own dspy.Module")
    pred.add_argument("--trust-endpoint", action="append", default=[], metavar="URL",
                      help="allow the bundle's LM to call this api_base (and send it your API key); repeatable")
    pred.set_defaults(func=cmd_predict)
    models = sub.add_parser("models", help="list the embedded models, or check your own (--inspect PATH)")
    models.add_argument("--json", action="store_true")
    models.add_argument("--inspect", metavar="PATH", help="check a Hugging Face model folder or a .gguf file and say "
                        "what was found (architecture, parameters, chat template, fine-tunable, memory)")
    models.add_argument("--weights", metavar="DIR", help="with a .gguf: the Hugging Face folder it was made from")
    models.add_argument("--quant", help="the type a folder is served as (default Q4_K_M)")
    models.set_defaults(func=cmd_models)
    doctor = sub.add_parser("doctor", help="check that the embedded models run on this CPU (generation, a LoRA step)")
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument("--no-calibrate", action="store_true",
                        help="skip measuring this machine's speed for the estimate (done when it is not cached)")
    doctor.set_defaults(func=cmd_doctor)
    calibrate = sub.add_parser("calibrate", help="measure this machine's speed for the estimate (calls, training "
                                                 "rows) in child processes, and cache it")
    calibrate.add_argument("--json", action="store_true")
    calibrate.set_defaults(func=cmd_calibrate)
    app = sub.add_parser("app", help="start the dashboard on http://localhost:PORT (never on other interfaces)")
    app.add_argument("--port", type=_port, default=8501)
    app.set_defaults(func=cmd_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dotenv import load_dotenv

    load_dotenv()  # API keys may come from a .env file in the working directory
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()  # log lines never carry a key
    if not args.verbose:
        _quiet_libraries()
    started = time.monotonic()
    try:
        return args.func(args)
    except StudioError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        logger.debug("unexpected error", exc_info=True)
        print(f"error: unexpected {type(e).__name__}: {shown(redact(str(e)), 400, quotes=False)}", file=sys.stderr)
        return 3
    finally:
        logger.info("done in %.1f s", time.monotonic() - started)
