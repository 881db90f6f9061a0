"""The table of optimizers: the behaviour of every step type a strategy can use, by key.

Each row (``core.optimizers.entry.Optimizer``) ties a step type's declaration (key, kind and
settings model, in ``core.config.steps``, which the configuration reads) to how it is built for a
run and how its cost is estimated. Adding an optimizer means its declaration there, one new module
here and one row below.
"""

from __future__ import annotations

from typing import Any

from core.config.steps import STEP_TYPES
from core.errors import shown
from core.optimizers import finetune, gepa, mipro, random_search
from core.optimizers.entry import Optimizer

OPTIMIZERS: dict[str, Optimizer] = {o.key: o for o in (random_search.OPTIMIZER, mipro.OPTIMIZER, gepa.OPTIMIZER,
                                                     finetune.OPTIMIZER)}
if list(OPTIMIZERS) != list(STEP_TYPES):  # a declared step type without behaviour, or the reverse
    raise RuntimeError(f"optimizers {list(OPTIMIZERS)} do not match the declared step types {list(STEP_TYPES)}")


def get_optimizer(key: str) -> Optimizer:
    """The row of ``key``; ``KeyError`` naming the allowed keys otherwise."""
    try:
        return OPTIMIZERS[key]
    except KeyError:
        raise KeyError(f"optimizer {shown(key)} is unknown; allowed: {', '.join(OPTIMIZERS)}") from None


def step_warnings(doc: Any, key: str) -> list[str]:
    """What the row of step ``key``'s type warns about that step in the run document ``doc`` (a draft), for the
    Strategy page; none for an unknown key or type."""
    step = getattr(doc, "optimizers", {}).get(key)
    row = OPTIMIZERS.get(getattr(step, "type", None))
    return [] if row is None else list(row.warnings(step.settings, doc))
