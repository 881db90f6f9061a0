"""Export a run as a self-contained bundle, and load a bundle back as a runnable program.

A bundle (a folder or a .zip of it) holds:

* ``program.json`` - the best program (``Module.save``: demos, instructions, each predictor's LM
  state including fine-tuned model names); ``baseline.json`` - the unoptimized program;
* ``manifest.json`` - dspy version, the program definition needed to rebuild it, predictor ->
  role/LM/model, the weights folder of each fine-tuned model, strategy, round table, scores and the
  run configuration without secrets;
* ``weights/<model>/`` - the fine-tuned weights; ``source/`` - a user program's file;
* ``rounds.jsonl`` and a short ``README.md``.

No pickle anywhere: everything is JSON, GGUF/safetensors weights or Python source.
``load_bundle(path)`` works in a fresh process that never saw the app.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dspy

from core.config import parse_config
from core.errors import ExportError, StudioError
from core.programs import apply_label_choices, build_program_from_definition, program_definition
from core.store import Store, now_iso

BUNDLE_FORMAT = "bettertogether-studio-bundle"
BUNDLE_VERSION = 1
TRUSTED_ENGINE_PREFIX = "core."

README = """# {name}

Exported by BetterTogether Studio on {created} from run {run_id} (strategy `{strategy}`, best
`{best}`: validation {best_score}, test {test_best}).

```python
from core.export import load_bundle

program = load_bundle("{folder}")
print(program({example}))
```

From a shell: `python -m core predict {folder} --input '{example_json}'`.

Files: `program.json` (best program), `baseline.json`, `manifest.json`, `config.json`,
`rounds.jsonl`, `weights/` (fine-tuned models), `source/` (user program, if any). No pickle.
LMs served by hosted providers read their API keys from the environment; none is stored here.
"""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _predictor_table(program: dspy.Module, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    table = {}
    for name, predictor in program.named_predictors():
        assignment = config.get("predictors", {}).get(name, {})
        table[name] = {
            "role": assignment.get("role"),
            "lm": assignment.get("lm"),
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
    """Write the bundle of a finished (or cancelled, or failed-with-best) run to ``out``.

    ``out`` ending in ``.zip`` (or ``as_zip=True``) gives a zip file; otherwise a folder.
    """
    run = store.get_run(run_id)
    best = {a.kind: a for a in store.list_artifacts(run_id)}.get("best_program")
    if best is None or not Path(best.path).is_file():
        raise ExportError(f"run {run_id} has no best program to export (status {run.status.value}); "
                          "export a run that evaluated at least its baseline")
    out = Path(out)
    as_zip = out.suffix == ".zip" if as_zip is None else as_zip
    config = parse_config(run.config)
    program = _load_saved(config, Path(best.path))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / (out.stem if as_zip else out.name)
        bundle.mkdir()
        shutil.copy(best.path, bundle / "program.json")
        baseline = {a.kind: a for a in store.list_artifacts(run_id)}.get("baseline_program")
        if baseline is not None and Path(baseline.path).is_file():
            shutil.copy(baseline.path, bundle / "baseline.json")
        definition = program_definition(config.program)
        if definition["kind"] == "user_file":
            (bundle / "source").mkdir()
            (bundle / "source" / definition["file_name"]).write_text(definition["source"], encoding="utf-8")
            definition = {k: v for k, v in definition.items() if k != "source"}
        recorded = {a.meta.get("model"): a for a in store.list_artifacts(run_id, "weights")}
        finetuned = _copy_weights(program, bundle, recorded)
        rounds = [asdict(r) for r in store.list_rounds(run_id)]
        with (bundle / "rounds.jsonl").open("w", encoding="utf-8") as f:
            for r in rounds:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (bundle / "config.json").write_text(json.dumps(run.config, indent=2, ensure_ascii=False), encoding="utf-8")
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
            "predictors": _predictor_table(program, run.config),
            "finetuned": finetuned,
            "strategy": config.strategy,
            "best_strategy": run.best_strategy,
            "scores": {
                "baseline_val": run.baseline_score,
                "best_val": run.best_score,
                "baseline_test": run.test_baseline_score,
                "best_test": run.test_best_score,
            },
            "status": run.status.value,
            "rounds": [{k: r[k] for k in ("index", "strategy", "score", "eval_failed", "is_best")} for r in rounds],
            "config": run.config,
        }
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        example = {field: "..." for field in config.data.inputs}
        (bundle / "README.md").write_text(README.format(
            name=run.name, created=manifest["created_at"][:10], run_id=run_id, strategy=config.strategy,
            best=run.best_strategy or "baseline", best_score=run.best_score, test_best=run.test_best_score,
            folder=out.name, example=", ".join(f"{k}='...'" for k in example),
            example_json=json.dumps(example),
        ), encoding="utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        if as_zip:
            if out.exists():
                out.unlink()
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(bundle.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(bundle).as_posix())
        else:
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(bundle, out)
    store.add_artifact(run_id, "export", str(out), {"zip": as_zip})
    return out


def run_label_choices(store: Store, run_id: int) -> dict[str, list[str]]:
    """The label choices a run used (recorded when it started)."""
    event = store.latest_event(run_id, "setup")
    return dict((event.data or {}).get("label_choices") or {}) if event else {}


def _load_saved(config: Any, path: Path) -> dspy.Module:
    from core.programs import build_program

    program = build_program(config.program, allow_user_code=config.allow_user_code)
    _check_engines(path)
    program.load(str(path), allow_unsafe_lm_state=True)
    return program


def _check_engines(program_json: Path) -> None:
    """Refuse custom LM engines outside this package before ``allow_unsafe_lm_state`` imports them."""
    state = json.loads(program_json.read_text(encoding="utf-8"))
    for name, entry in state.items():
        engine = (entry.get("lm") or {}).get("engine") if isinstance(entry, dict) else None
        if isinstance(engine, dict):
            cls = str(engine.get("class", ""))
            if not cls.startswith(TRUSTED_ENGINE_PREFIX):
                raise ExportError(f"predictor {name!r} uses the LM engine {cls!r}, which is not part of "
                                  "BetterTogether Studio; refusing to import it")


def _import_engine(path: str) -> Any:
    if not path.startswith(TRUSTED_ENGINE_PREFIX):
        raise ExportError(f"engine {path!r} is not part of BetterTogether Studio; refusing to import it")
    module_name, qualname = path.split(":")
    return getattr(importlib.import_module(module_name), qualname)


def _open_bundle(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.is_file() and zipfile.is_zipfile(path):
        target = Path(tempfile.mkdtemp(prefix="bt-bundle-"))
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                resolved = (target / member).resolve()
                if not str(resolved).startswith(str(target.resolve())):
                    raise ExportError(f"unsafe path {member!r} in bundle {path}")
            zf.extractall(target)
        return target
    raise ExportError(f"{path} is not a bundle folder or .zip file")


def read_manifest(path: str | Path) -> dict[str, Any]:
    bundle = _open_bundle(Path(path))
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise ExportError(f"{path} has no manifest.json; it is not a BetterTogether Studio bundle")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ExportError(f"{path} is not a BetterTogether Studio bundle (format {manifest.get('format')!r})")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise ExportError(f"bundle format version {manifest.get('format_version')} is not supported; "
                          f"this version reads {BUNDLE_VERSION}")
    manifest["_folder"] = str(bundle)
    return manifest


def load_bundle(path: str | Path, *, allow_user_code: bool = False, which: str = "program") -> dspy.Module:
    """A runnable program from a bundle; ``which`` is "program" (best) or "baseline".

    A bundle of a user's own ``dspy.Module`` runs that file's code: pass ``allow_user_code=True``.
    """
    manifest = read_manifest(path)
    bundle = Path(manifest["_folder"])
    try:
        program = build_program_from_definition(
            manifest["program"], allow_user_code=allow_user_code, source_dir=bundle / "source"
        )
        for model, entry in manifest.get("finetuned", {}).items():
            if entry.get("engine"):
                engine = _import_engine(entry["engine"])
                engine = engine.shared() if hasattr(engine, "shared") else engine  # the process-wide instance
                engine.register_finetuned(model, bundle / entry["folder"])
        program_json = bundle / f"{which}.json"
        _check_engines(program_json)
        program.load(str(program_json), allow_unsafe_lm_state=True)
        apply_label_choices(program, manifest.get("label_choices") or {})
    except StudioError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken bundle is a user-facing error
        raise ExportError(f"cannot load bundle {path}: {type(e).__name__}: {e}") from e
    return program


def predict(program: dspy.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run one input through a loaded program; returns its outputs as plain JSON values."""
    with dspy.context(adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        prediction = program(**inputs)
    return {k: v for k, v in prediction.toDict().items()}
