"""Export a run as a self-contained bundle, and load a bundle back as a runnable program.

A bundle (a folder or a .zip of it) holds:

* ``program.json`` - the best program (``Module.save``: demos, instructions, each predictor's LM
  state including fine-tuned model names); ``baseline.json`` - the unoptimized program;
* ``manifest.json`` - dspy version, the program definition needed to rebuild it, predictor ->
  role/LM/model, the weights folder of each fine-tuned model, strategy, round table, scores and the
  run configuration without secrets;
* ``weights/<model>/`` - the fine-tuned weights; ``source/`` - a user program's file;
* ``models/<key>/`` - the GGUF of each of your own models (``local`` LMs) the program needs, so that it runs
  without your model folder (``core.bundles.local_models``);
* ``rounds.jsonl`` and a short ``README.md``.

No pickle anywhere: everything is JSON, GGUF/safetensors weights or Python source.
``load_bundle(path)`` works in a fresh process that never saw the app; loading treats the bundle
as untrusted data (see ``core.bundles.load``).

Export writes, never deletes: an existing target that is not a Studio bundle is refused; the new
bundle is written under a temporary name next to the target and renamed into place, so a failed
export leaves the old bundle intact. Secrets are redacted from every text file written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dspy

from core.bundles.load import (  # noqa: F401 - the loading API, re-exported for `from core.bundles.export import ...`
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    UntrustedEndpointError,
    load_bundle,
    predict,
    read_manifest,
)
from core.bundles.local_models import carry_local_models
from core.bundles.saved import load_saved_program, run_label_choices
from core.config.schema import RunConfig, config_to_dict
from core.errors import ExportError
from core.programs import program_definition
from core.store import Store, now_iso
from core.store.secrets import redact, redact_value

README = """# {name}

Exported by BetterTogether Studio on {created} from run {run_id} (strategy `{strategy}`, best
`{best}`: validation {best_score}, test {test_best}).

```python
from core.bundles.export import load_bundle

program = load_bundle("{folder}")
print(program({example}))
```

From a shell: `python -m core predict {folder} --input '{example_json}'`.

Files: `program.json` (best program), `baseline.json`, `manifest.json`, `config.json`,
`rounds.jsonl`, `weights/` (fine-tuned models), `models/` (your own models' GGUFs, if any), `source/` (user
program, if any). No pickle.
LMs served by hosted providers read their API keys from the environment; none is stored here.
"""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _predictor_table(program: dspy.Module, config: RunConfig) -> dict[str, dict[str, Any]]:
    table = {}
    for name, predictor in program.named_predictors():
        assignment = config.predictors.get(name)
        table[name] = {
            "role": assignment.role if assignment else None,
            "lm": assignment.lm if assignment else None,
            "model": getattr(predictor.lm, "model", None),
            "demos": len(predictor.demos),
        }
    return table


def _copy_weights(program: dspy.Module, bundle: Path, recorded: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Copy each fine-tuned model's artifact folder; returns model -> {folder, engine}.

    ``recorded`` maps model names to the run's "weights" artifacts (folder and engine class).
    """
    finetuned: dict[str, dict[str, str]] = {}
    for _, predictor in program.named_predictors():
        model = getattr(predictor.lm, "model", None)
        if model is None or model in finetuned or model not in recorded:
            continue
        artifact = recorded[model]
        source = Path(artifact.path)
        if not source.is_dir():
            raise ExportError(f"the weights of {model} are missing from {source}; they cannot be exported")
        target = Path("weights") / _safe(model)
        shutil.copytree(source, bundle / target, dirs_exist_ok=True)
        finetuned[model] = {"folder": target.as_posix(), "engine": artifact.meta.get("engine")}
    return finetuned


def export_run(store: Store, run_id: int, out: str | Path, *, as_zip: bool | None = None) -> Path:
    """Write the bundle of a finished, failed, cancelled or interrupted run to ``out`` (its best program so far).

    ``out`` ending in ``.zip`` (or ``as_zip=True``) gives a zip file; otherwise a folder.
    """
    run = store.get_run(run_id)
    best = {a.kind: a for a in store.list_artifacts(run_id)}.get("best_program")
    if best is None or not Path(best.path).is_file():
        raise ExportError(f"run {run_id} has no best program to export (status {run.status.value}); "
                          "export a run that evaluated at least its baseline")
    out = Path(out).expanduser()
    as_zip = out.suffix == ".zip" if as_zip is None else as_zip
    _check_target(out, as_zip, run_id)
    config = run.require_config()
    program = load_saved_program(config, best.path)  # the run's own file, written by its runner
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        bundle = work / "bundle"
        bundle.mkdir()
        _copy_redacted(Path(best.path), bundle / "program.json")
        baseline = {a.kind: a for a in store.list_artifacts(run_id)}.get("baseline_program")
        if baseline is not None and Path(baseline.path).is_file():
            _copy_redacted(Path(baseline.path), bundle / "baseline.json")
        definition = program_definition(config.program)
        if definition["kind"] == "user_file":
            (bundle / "source").mkdir()
            (bundle / "source" / definition["file_name"]).write_text(definition["source"], encoding="utf-8")
            definition = {k: v for k, v in definition.items() if k != "source"}
        recorded = {a.meta.get("model"): a for a in store.list_artifacts(run_id, "weights")}
        finetuned = _copy_weights(program, bundle, recorded)
        local_models = carry_local_models(program, config, bundle, finetuned)
        rounds = [{**asdict(r), "details": r.details.to_json()} for r in store.list_rounds(run_id)]
        with (bundle / "rounds.jsonl").open("w", encoding="utf-8") as f:
            for r in rounds:
                f.write(redact(json.dumps(redact_value(r), ensure_ascii=False)) + "\n")
        safe_config = redact_value(config_to_dict(config))
        (bundle / "config.json").write_text(json.dumps(safe_config, indent=2, ensure_ascii=False), encoding="utf-8")
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "dspy_version": dspy.__version__,
            "created_at": now_iso(),
            "run_id": run_id,
            "name": run.name,
            "program": definition,
            "inputs": config.data.inputs,
            "label_choices": run_label_choices(store, run_id),
            "labels": config.data.labels,
            "predictors": _predictor_table(program, config),
            "finetuned": finetuned,
            "local_models": local_models,
            "strategy": config.strategy,
            "best_strategy": run.best_strategy,
            "round": best.meta.get("round"),  # the round whose program this is (the best so far if it ended early)
            "scores": {
                "baseline_val": run.baseline_score,
                "best_val": run.best_score,
                "baseline_test": run.test_baseline_score,
                "best_test": run.test_best_score,
            },
            "status": run.status.value,
            "rounds": [{k: r[k] for k in ("index", "strategy", "score", "eval_failed", "is_best")} for r in rounds],
            "config": safe_config,
        }
        manifest = redact_value(manifest)
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        example = {field: "..." for field in config.data.inputs}
        (bundle / "README.md").write_text(README.format(
            name=run.name, created=manifest["created_at"][:10], run_id=run_id, strategy=config.strategy,
            best=run.best_strategy or "baseline", best_score=run.best_score, test_best=run.test_best_score,
            folder=out.name, example=", ".join(f"{k}='...'" for k in example),
            example_json=json.dumps(example),
        ), encoding="utf-8")
        from core.evidence.report import build_report  # the shareable report travels with the bundle

        (bundle / "report.html").write_text(build_report(store, run_id), encoding="utf-8")
        _place(bundle, out, as_zip, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    store.add_artifact(run_id, "export", str(out), {"zip": as_zip})
    return out


def _copy_redacted(source: Path, target: Path) -> None:
    """Copy a saved program's JSON with key-like strings (an ``api_base`` with credentials...) redacted."""
    state = json.loads(source.read_text(encoding="utf-8"))
    target.write_text(json.dumps(redact_value(state), indent=2, ensure_ascii=False), encoding="utf-8")


def _check_target(out: Path, as_zip: bool, run_id: int) -> None:
    """Refuse to write over anything that is not a bundle written by the Studio."""
    if not (out.exists() or out.is_symlink()):
        return
    suggestion = out / f"run-{run_id}{'.zip' if as_zip else ''}" if out.is_dir() else out.with_name(
        f"{out.stem}-run-{run_id}{out.suffix}")
    if out.is_symlink() or as_zip != out.is_file():
        raise ExportError(f"{out} already exists and is not a BetterTogether Studio bundle {'.zip' if as_zip else 'folder'};"
                          f" the export never overwrites other files: choose a new name, e.g. {suggestion}")
    try:
        read_manifest(out)
    except ExportError:
        raise ExportError(f"{out} already exists and is not a BetterTogether Studio bundle; the export never "
                          f"overwrites other files: choose a new name, e.g. {suggestion}") from None


def _place(bundle: Path, out: Path, as_zip: bool, work: Path) -> None:
    """Move the finished bundle to ``out`` by renames; an old Studio bundle there is replaced last."""
    if as_zip:
        partial = work / "bundle.zip"
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(bundle.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(bundle).as_posix())
        os.replace(partial, out)  # atomic: readers see the old zip or the new one
        return
    if not out.exists():
        os.rename(bundle, out)
        return
    old = work / "previous"
    os.rename(out, old)
    try:
        os.rename(bundle, out)
    except OSError:
        os.rename(old, out)  # put the old bundle back
        raise
