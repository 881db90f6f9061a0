"""Optimizers used as BetterTogether steps, and the table that declares them.

Public surface: the table (``OPTIMIZERS``, ``get_optimizer``, ``optimizer_kind``) and
what a row declares (``Optimizer``, ``Settings``, ``BuildContext``, ``EstimateContext``, ``StepCost``).
One module per optimizer (``random_search``, ``mipro``, ``finetune``); their machinery: ``prompt``
(prompt steps that keep per-predictor LMs), ``stratify`` (label-covering demo sets), ``traces``
(the weight step's rows: self, teacher, gold; balance) and ``weights`` (``RoleAwareFinetune``).
"""

from core.optimizers.entry import BuildContext, EstimateContext, Optimizer, Settings, StepCost
from core.optimizers.table import OPTIMIZERS, get_optimizer, optimizer_kind

__all__ = [
    "OPTIMIZERS",
    "BuildContext",
    "EstimateContext",
    "Optimizer",
    "Settings",
    "StepCost",
    "get_optimizer",
    "optimizer_kind",
]
