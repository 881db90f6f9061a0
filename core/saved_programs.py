"""Look inside saved programs of a run: load them, list each predictor's instructions and demos.

``load_saved_program`` rebuilds the program of a run from its configuration and loads a saved
``Module.save`` file after refusing LM engines outside this package (as ``core.export`` does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from core.config import RunConfig
from core.errors import ExportError
from core.export import _check_engines, run_label_choices
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


def load_saved_program(config: RunConfig, path: str | Path, weights: dict[str, Path] | None = None,
                       label_choices: dict[str, list[str]] | None = None) -> dspy.Module:
    """The program of ``config`` with the state saved at ``path`` (demos, instructions, LMs).

    ``weights`` maps fine-tuned model names to their folders (the run's "weights" artifacts):
    models this process does not serve yet (after a restart) are registered again from them.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"saved program {path} does not exist; the run may have been deleted")
    program = build_program(config.program, allow_user_code=config.allow_user_code)
    _check_engines(path)
    program.load(str(path), allow_unsafe_lm_state=True)
    _register_finetuned(program, weights or {})
    apply_label_choices(program, label_choices or {})
    return program


def _register_finetuned(program: dspy.Module, weights: dict[str, Path]) -> None:
    for _, predictor in program.named_predictors():
        lm = predictor.lm
        engine = getattr(lm, "engine", None)
        folder = weights.get(getattr(lm, "model", ""))
        if folder is None or engine is None or isinstance(engine, str) or not hasattr(engine, "register_finetuned"):
            continue
        if engine.artifact_dir(lm.model) is not None:
            continue
        try:
            engine.register_finetuned(lm.model, Path(folder))
        except Exception:  # noqa: BLE001 - the base model still answers; say so in the log
            logger.exception("cannot register fine-tuned model %s from %s", lm.model, folder)


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
    weights = {a.meta.get("model"): Path(a.path) for a in store.list_artifacts(run_id, "weights")}
    return load_saved_program(run.require_config(), path, weights, run_label_choices(store, run_id))


def describe_program(program: dspy.Module) -> list[PredictorView]:
    """Each predictor's model, instructions and demos (as plain dicts)."""
    views = []
    for name, predictor in program.named_predictors():
        demos = [dict(d.items()) if hasattr(d, "items") else dict(d) for d in predictor.demos]
        views.append(PredictorView(name, getattr(predictor.lm, "model", None), predictor.signature.instructions,
                                   [{k: v for k, v in d.items() if not k.startswith("dspy_")} for d in demos]))
    return views
