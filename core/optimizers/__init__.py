"""Optimizers used as BetterTogether steps, and the table that declares them.

Public surface: the table (``OPTIMIZERS``, ``get_optimizer``) and what a row adds to its step
type's declaration (``Optimizer``, ``BuildContext``, ``EstimateContext``, ``StepCost``; the
declarations themselves, settings models included, are ``core.config.steps``).
One module per optimizer (``random_search``, ``mipro``, ``gepa``, ``finetune``); their machinery: ``prompt``
(prompt steps that keep per-predictor LMs), ``stratify`` (label-covering demo sets), ``traces``
(the weight step's rows: self, teacher, gold; balance) and ``weights`` (``RoleAwareFinetune``).
"""

from core.optimizers.entry import BuildContext, EstimateContext, Optimizer, StepCost
from core.optimizers.table import OPTIMIZERS, get_optimizer

__all__ = [
    "OPTIMIZERS",
    "BuildContext",
    "EstimateContext",
    "Optimizer",
    "StepCost",
    "get_optimizer",
]
