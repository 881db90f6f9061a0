"""Resuming a run: rebuild its finished rounds from disk so that BetterTogether can replay them.

Why replay rather than start BetterTogether in the middle: ``BetterTogether._run_strategies``
keeps state across steps that a resumed run must reproduce exactly: the seeded ``random.Random``
that shuffles the training set in place before every step, the candidate list (round indexes, the
best program and its ties) and the student handed from one step to the next. So a resumed worker
runs the very same loop with the same seed and split; for each finished round it skips the work
and hands back the recorded program and score (``StudioBetterTogether(replay=...)``); the
remaining steps run for real and are appended with the next round indexes.

A recorded round is rebuilt from what the run saved: ``rounds/<i>.json`` (demos, instructions),
the model that served each predictor (the round's ``predictor_models``) and the fine-tuned
weights of the run (its ``weights`` artifacts, registered again with their engine). Base models
are the LMs ``build_run`` built from the same config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from core.bundles.engines import register_finetuned
from core.bundles.saved import load_saved_state
from core.errors import StoreError, shown
from core.lms.registry import engine_of
from core.plan.prepare import PreparedRun
from core.store import Store
from core.store.records import Round

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayedRound:
    """A finished round of an earlier attempt: what BetterTogether gets back instead of running it."""

    index: int
    strategy: str
    score: float | None
    program: dspy.Module


def finished_rounds(store: Store, run_id: int) -> list[Round]:
    """The rounds 0..k recorded without a gap (a resume continues after the last of them)."""
    rounds = []
    for expected, round_ in enumerate(store.list_rounds(run_id)):
        if round_.index != expected:
            break
        rounds.append(round_)
    return rounds


def load_replay(store: Store, run_id: int, prepared: PreparedRun, folder: Path) -> list[ReplayedRound]:
    """The finished rounds of run ``run_id`` as runnable programs (round 0 is the baseline)."""
    rounds = finished_rounds(store, run_id)
    lms = _language_models(store, run_id, prepared)
    replay = []
    for round_ in rounds:
        program = prepared.program.deepcopy() if round_.index == 0 else _load_round(round_, prepared, folder, lms)
        replay.append(ReplayedRound(round_.index, round_.strategy, round_.score, program))
    return replay


def _language_models(store: Store, run_id: int, prepared: PreparedRun) -> dict[str, Any]:
    """Model name -> LM: the base LMs of the config and the run's fine-tuned models (registered again)."""
    lms = {lm.model: lm for lm in prepared.lms.values()}
    for artifact in store.list_artifacts(run_id, "weights"):
        model, base = artifact.meta.get("model"), artifact.meta.get("base")
        base_lm = lms.get(base)
        if not model or base_lm is None or model in lms:
            continue
        folder = Path(artifact.path)
        if not folder.is_dir():
            logger.warning("run %s: the weights of %s are missing from %s", run_id, model, folder)
            continue
        if register_finetuned(engine_of(base_lm), model, folder):
            lms[model] = base_lm.copy(model=model)
    return lms


def _load_round(round_: Round, prepared: PreparedRun, folder: Path, lms: dict[str, Any]) -> dspy.Module:
    path = folder / "rounds" / f"{round_.index}.json"
    if not path.is_file():
        raise StoreError(f"round {round_.index} cannot be resumed: its program {path} is missing")
    program = prepared.program.deepcopy()
    served = {}  # the LMs come from this run's config and weights, not from the file
    for name, _ in program.named_predictors():
        model = round_.predictor_models.get(name)
        if model not in lms:
            raise StoreError(f"round {round_.index} cannot be resumed: predictor {shown(name)} was served by {shown(model)}, "
                             f"whose weights are not in the run; known models: {sorted(lms)}")
        served[name] = lms[model]
    return load_saved_state(program, path, lms=served)
