"""Runs: one BetterTogether optimization per run, recorded round by round in the store.

- ``manager``: ``RunManager`` starts, queues, cancels and supervises runs (``get_manager``);
- ``execute``: ``execute_run`` compiles one prepared run and returns its ``RunOutcome``;
- ``bettertogether``: ``StudioBetterTogether``, DSPy's optimizer with exact round boundaries;
- ``recorder``: ``RoundRecorder`` writes rounds, events and round programs;
- ``observer``: ``RunObserver`` counts calls and tokens per model and raises on cancel;
- ``build``: optimizers, adapter and prices of a prepared run.
"""

from core.run.build import build_optimizers, effective_threads, make_adapter, model_prices, with_costs
from core.run.execute import RunOutcome, evaluate_score, execute_run
from core.run.manager import RunManager, get_manager
from core.run.observer import ModelUsage, RunObserver, usage_delta
from core.run.recorder import RoundRecorder, best_index

__all__ = [
    "ModelUsage",
    "RoundRecorder",
    "RunManager",
    "RunObserver",
    "RunOutcome",
    "best_index",
    "build_optimizers",
    "effective_threads",
    "evaluate_score",
    "execute_run",
    "get_manager",
    "make_adapter",
    "model_prices",
    "usage_delta",
    "with_costs",
]
