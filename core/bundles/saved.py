"""The saved programs of a run: the one way to load them, and each predictor's instructions and demos.

A run saves its programs with ``Module.save`` (``best.json``, ``baseline.json``, ``rounds/<i>.json``).
Every reader of these files goes through ``load_saved_state``, which reads a file once, refuses LM
classes and engines outside this package (``core.bundles.engines``) before DSPy would import them,
and loads it into a program: the Results page (``load_run_program``), the export
(``load_saved_program``) and a resumed run (``load_saved_state`` with the run's own LMs). (The
report and the evidence read the saved JSON as data, without building a program.)
Fine-tuned models are served again with ``core.bundles.engines.register_finetuned``, as bundles do.
A bundle from elsewhere is not a run's own file: ``core.bundles.load`` reads it as untrusted data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from core.bundles.engines import check_lm_engines, register_finetuned
from core.bundles.local_models import register_named
from core.config.schema import RunConfig
from core.errors import ExportError
from core.lms.registry import engine_of
from core.programs import apply_label_choices, build_program
from core.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictorView:
    """One predictor of a saved program as the results page shows it."""

    name: str
    model: str | None
    instructions: str
    demos: list[dict[str, Any]]


def load_saved_state(program: dspy.Module, path: str | Path, lms: Mapping[str, Any] | None = None) -> dspy.Module:
    """``program`` with the state saved at ``path`` (demos, instructions, signatures), returned.

    The LMs come from the file, after its LM classes and engines are checked to be this package's;
    or, with ``lms`` (predictor name -> LM), are those LMs (the file's LM states are then ignored).
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"saved program {path} does not exist; the run may have been deleted")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ExportError(f"saved program {path} cannot be read as JSON: {e}") from e
    if not isinstance(state, dict):
        raise ExportError(f"saved program {path} is not a JSON object of predictor states")
    if lms is None:
        check_lm_engines(state)
        program.load_state(state, allow_unsafe_lm_state=True)
        return program
    for entry in state.values():
        if isinstance(entry, dict) and "lm" in entry:
            entry["lm"] = None
    program.load_state(state)
    for name, predictor in program.named_predictors():
        predictor.lm = lms[name]
    return program


def load_saved_program(config: RunConfig, path: str | Path, weights: Mapping[str, Path] | None = None,
                       label_choices: dict[str, list[str]] | None = None) -> dspy.Module:
    """The program of ``config`` with the state saved at ``path`` (demos, instructions, LMs).

    ``weights`` maps fine-tuned model names to their folders (the run's "weights" artifacts):
    the models the program's predictors name are registered again from them (a fresh process, a
    restarted app), after the local models they are served by or fine-tuned from (``config``'s ``local`` LMs).
    """
    program = load_saved_state(build_program(config.program, allow_user_code=config.allow_user_code), path)
    register_named(program, config)
    for _, predictor in program.named_predictors():
        lm = predictor.lm
        folder = (weights or {}).get(getattr(lm, "model", ""))
        if folder is None:
            continue
        try:
            register_finetuned(engine_of(lm), lm.model, folder)
        except Exception:  # noqa: BLE001 - the program still loads; its calls will name the missing model
            logger.exception("cannot register fine-tuned model %s from %s", lm.model, folder)
    apply_label_choices(program, label_choices or {})
    return program


def run_weights(store: Store, run_id: int) -> dict[str, Path]:
    """Fine-tuned model name -> its weights folder, for each model a run trained."""
    return {a.meta.get("model"): Path(a.path) for a in store.list_artifacts(run_id, "weights")}


def run_label_choices(store: Store, run_id: int) -> dict[str, list[str]]:
    """The label choices a run used (recorded when it started)."""
    event = store.latest_event(run_id, "setup")
    return dict((event.data or {}).get("label_choices") or {}) if event else {}


def saved_program_path(store: Store, run_id: int, kind: str) -> Path | None:
    """The file of the ``baseline_program`` or ``best_program`` artifact of a run, if any."""
    artifacts = store.list_artifacts(run_id, kind)
    return Path(artifacts[-1].path) if artifacts else None


def load_run_program(store: Store, run_id: int, kind: str) -> dspy.Module:
    """The baseline (``baseline_program``) or best (``best_program``) program of a run."""
    run = store.get_run(run_id)
    path = saved_program_path(store, run_id, kind)
    if path is None:
        raise ExportError(f"run {run_id} has no saved {kind.replace('_', ' ')} (status {run.status.value}); "
                          "only runs that evaluated their baseline have one")
    return load_saved_program(run.require_config(), path, run_weights(store, run_id), run_label_choices(store, run_id))


def describe_program(program: dspy.Module) -> list[PredictorView]:
    """Each predictor's model, instructions and demos (as plain dicts)."""
    views = []
    for name, predictor in program.named_predictors():
        demos = [dict(d.items()) if hasattr(d, "items") else dict(d) for d in predictor.demos]
        views.append(PredictorView(name, getattr(predictor.lm, "model", None), predictor.signature.instructions,
                                   [{k: v for k, v in d.items() if not k.startswith("dspy_")} for d in demos]))
    return views
