"""The table of optimizers: every step type a strategy can use, by key.

Each row (``core.optimizers.entry.Optimizer``) says in one place what the configuration, the
Strategy page, the estimate and the runner need: its key and kind (prompt or weight), its settings
model (defaults and bounds), how to build it and how to estimate it. Adding an optimizer means one
new module and one row here; the configuration's union of step types is built from this table.
"""

from __future__ import annotations

from core.optimizers import finetune, mipro, random_search
from core.optimizers.entry import Optimizer

OPTIMIZERS: dict[str, Optimizer] = {o.key: o for o in (random_search.OPTIMIZER, mipro.OPTIMIZER, finetune.OPTIMIZER)}


def get_optimizer(key: str) -> Optimizer:
    """The row of ``key``; ``KeyError`` naming the allowed keys otherwise."""
    try:
        return OPTIMIZERS[key]
    except KeyError:
        raise KeyError(f"optimizer {key!r} is unknown; allowed: {', '.join(OPTIMIZERS)}") from None


def optimizer_kind(key: str) -> str:
    """'prompt' or 'weight' for an optimizer key (configurations only hold keys of the table)."""
    return get_optimizer(key).kind
