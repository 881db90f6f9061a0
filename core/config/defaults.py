"""Ready-to-run configurations: a first-time user picks a template and presses Run.

``default_config(template)`` gives the template's sample data, field mapping, split, metric,
``p -> w -> p`` strategy and settings measured to finish on a 2-core CPU, with every predictor
on an embedded model (the first on the large-role default, the last on the small-role one).
``scripted_config(template)`` is the same with the scripted test LM (tests, demos of the logic).
"""

from __future__ import annotations

import copy
from typing import Any

from core.config.schema import RunConfig, parse_config
from core.lms.lora.params import train_overrides
from core.programs import TEMPLATES, StagedPipeline

# The first-run template: a two-module pipeline (extract on the large role, classify on the small
# one) whose whole p -> w -> p fits the 5-minute goal on 2 CPU cores (bench/default_run.py: 258-269 s).
# The tutorial's analyze -> classify pipeline (ChainOfThought, both stages fine-tuned by default) is
# slower on the embedded models and learns less from its 30 examples (bench/quality.py: test 8.3 -> 40.0
# against 14.2 -> 75.8).
DEFAULT_TEMPLATE = "support_triage"

# Budgets sized for the embedded models on 2 CPU cores (see bench/quality.py and bench/default_run.py):
# prompt steps try stratified labeled demo sets (every label value shown; cheap, since the run's call
# cache answers the unchanged upstream predictor once), the weight step trains the label predictor on
# the gold labels of every training example (trace source 'auto' -> 'gold'), balanced per label, without
# demos in the rows (short rows train fast). Measured on support triage's 30 gold rows (test split, 20):
# lr 1e-3 x 12 steps and 2e-3 x 24 steps learn the format only (every intent 'bug', both right 15 %);
# lr 3e-3, batch 4, 4 epochs (32 steps) learns the labels (intent 75 %, urgency 100 %). The number of epochs is
# an upper bound: the weight step keeps the checkpoint that answers the run's validation examples best
# (core.lms.lora.validation), stopping after 2 checkpoints without a better one. A numeric table needed ~10
# epochs of 50 gold rows to learn its thresholds (test 30 -> 54 by hand), where 4 learned nothing.
EMBEDDED_TRAIN_OVERRIDES: dict[str, Any] = train_overrides(epochs=10, batch_size=4, learning_rate=3e-3)
"""The embedded models' fine-tuning recipe: what it changes of the defaults (``core.lms.lora.params.PARAMS``)."""
EMBEDDED_SPLIT = {"train": 30, "val": 10, "test": 20, "seed": 0}
# Templates whose default run uses another split. The pump readings (one Predict module, small role, numbers
# in, a status out): 50 gold rows to learn the thresholds from, 50 validation and 50 test examples (150 of
# its 168 rows) to measure it, the split in which a review saw p -> w -> p learn nothing on such a table.
EMBEDDED_SPLITS: dict[str, dict[str, int]] = {
    "pump_status": {"train": 50, "val": 50, "test": 50, "seed": 0},
}
EMBEDDED_OPTIMIZERS: dict[str, Any] = {
    "p": {
        "type": "random_search",
        "settings": {"max_bootstrapped_demos": 2, "max_labeled_demos": 1, "num_candidate_programs": 2,
                     "stratify": True},
    },
    "w": {"type": "finetune", "settings": {**EMBEDDED_TRAIN_OVERRIDES, "exclude_demos": True, "trace_source": "auto",
                                           "balance": "cap"}},
}
SCRIPTED_SPLIT = {"train": 40, "val": 20, "test": 40, "seed": 0}

# The scripted test LM knows a few keywords per sample task (a weak, partial competence), so that
# some traces are right before any optimization, as with a real LM. Not used by real models.
SCRIPTED_HINTS: dict[str, dict[str, dict[str, str]]] = {
    "analyze_classify": {
        "court": {"category": "legal"}, "regulators": {"category": "legal"}, "matter": {"category": "legal"},
        "blamed": {"category": "decline"}, "weaker": {"category": "decline"},
        "rose": {"category": "growth"}, "rising": {"category": "growth"},
        "deliveries": {"category": "operations"}, "operating": {"category": "operations"},
        "moderate": {"risk_level": "medium"}, "warned": {"risk_level": "high"},
        "restructuring": {"risk_level": "high"}, "little": {"risk_level": "low"}, "small": {"risk_level": "low"},
    },
    "support_triage": {
        "invoice": {"intent": "billing"}, "charged": {"intent": "billing"}, "crash": {"intent": "bug"},
        "error": {"intent": "bug"}, "password": {"intent": "account"}, "add": {"intent": "feature_request"},
        "urgent": {"urgency": "high"}, "rush": {"urgency": "low"},
    },
    "classifier": {
        "love": {"label": "positive"}, "great": {"label": "positive"}, "broke": {"label": "negative"},
        "disappointed": {"label": "negative"}, "okay": {"label": "neutral"},
    },
}


def embedded_split(template: str) -> dict[str, int]:
    """The split of ``template``'s default run on the embedded models (a copy: the caller's to edit)."""
    return dict(EMBEDDED_SPLITS.get(template, EMBEDDED_SPLIT))


def _predictor_names(template: str) -> list[str]:
    program = StagedPipeline(TEMPLATES[template].stages)
    return [name for name, _ in program.named_predictors()]


def _assignments(template: str, large_lm: str, small_lm: str, *, tutorial: bool = False) -> dict[str, dict[str, str]]:
    """The template's small predictors (by default the last) are fine-tuned; the others stay large (prompted).
    ``tutorial``: the tutorial's split whatever the template says, the last predictor small."""
    names = _predictor_names(template)
    small = set(names[-1:] if tutorial else TEMPLATES[template].small_predictors(names))
    return {name: {"lm": small_lm if name in small else large_lm, "role": "small" if name in small else "large"}
            for name in names}


def _base(template: str, split: dict[str, Any]) -> dict[str, Any]:
    t = TEMPLATES[template]
    return {
        "version": 1,
        "name": f"{t.title}",
        "program": {"kind": "template", "name": template},
        "data": {
            "source": {"kind": "sample", "name": t.sample},
            "mapping": dict(t.default_mapping),
            "inputs": list(t.input_fields),
            "labels": list(t.label_fields),
            "split": dict(split),
        },
        "metric": {"name": "exact_match"},
        "strategy": "p -> w -> p",
    }


def default_config_dict(template: str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """The default offline run for ``template`` as a plain document."""
    from core.lms.catalog import DEFAULT_MODELS

    doc = _base(template, embedded_split(template))
    doc["lms"] = {
        "large": {"kind": "embedded", "model": DEFAULT_MODELS["large"]},
        "small": {"kind": "embedded", "model": DEFAULT_MODELS["small"]},
    }
    doc["predictors"] = _assignments(template, "large", "small")
    doc["optimizers"] = copy.deepcopy(EMBEDDED_OPTIMIZERS)  # the caller's to edit, not the module's
    return doc


def default_config(template: str = DEFAULT_TEMPLATE) -> RunConfig:
    return parse_config(default_config_dict(template))


def scripted_config_dict(template: str = "analyze_classify", **options: Any) -> dict[str, Any]:
    """A run on the scripted test LM (fast; for tests and for trying the logic)."""
    doc = _base(template, SCRIPTED_SPLIT)
    options = {"hints": copy.deepcopy(SCRIPTED_HINTS.get(template, {})), **options}
    factory = "core.lms.scripted:make_lm"
    doc["lms"] = {
        "large": {"kind": "factory", "factory": factory, "options": {"name": "large", **options}},
        "small": {"kind": "factory", "factory": factory, "options": {"name": "small", **options}},
    }
    # the tutorial's split of roles: the scripted 'large' and 'small' LMs stand for a large prompted model
    # and a small fine-tuned one (the tests of both roles use it)
    doc["predictors"] = _assignments(template, "large", "small", tutorial=True)
    return doc


def scripted_config(template: str = "analyze_classify", **options: Any) -> RunConfig:
    return parse_config(scripted_config_dict(template, **options))


def with_smoke_budget(doc: dict[str, Any], *, train: int = 6, val: int = 3, test: int = 3,
                      seed: int = 0) -> dict[str, Any]:
    """``doc`` cut down to a smoke test of the whole path: a few examples, ``p -> w``, one prompt
    candidate with one demo, two training steps on every parsed trace (min_score 0)."""
    doc["data"]["split"] = {"train": train, "val": val, "test": test, "seed": seed}
    doc["strategy"] = "p -> w"
    doc["optimizers"] = {
        "p": {"type": "random_search",
              "settings": {"max_bootstrapped_demos": 1, "max_labeled_demos": 1, "num_candidate_programs": 1}},
        "w": {"type": "finetune", "settings": {**train_overrides(epochs=1, max_steps=2, batch_size=4),
                                               "min_score": 0.0}},
    }
    return doc
