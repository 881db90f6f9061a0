"""Runs: one BetterTogether optimization per run, recorded round by round in the store.

- ``manager``: ``RunManager`` starts, resumes, cancels and watches runs (``get_manager``);
- ``supervisor``: one run seen from the app: CPU lease, worker process, cancel escalation, deaths;
- ``worker``: the spawned process that builds one run from the plan checked at Start, runs and records it;
- ``resume``: the finished rounds of a run, rebuilt for a resumed run to replay;
- ``execute``: ``execute_run`` compiles one prepared run and returns its ``RunOutcome``;
- ``bettertogether``: ``StudioBetterTogether``, DSPy's optimizer with exact round boundaries;
- ``recorder``: ``RoundRecorder`` writes rounds, events and round programs;
- ``observer``: ``RunObserver`` counts calls and tokens per model, caps parallel calls per LM, raises on cancel;
- ``build``: optimizers, adapter and prices of a prepared run;
- ``sweep``: ``SweepManager`` drives sweeps (strategies x seeds, children are runs; ``get_sweep_manager``);
- ``executors``: where a sweep's child runs execute (``local``: this process's ``RunManager``; ``ray``);
- ``ray_executor``, ``ray_remote``, ``ray_service``: each child run as a Ray task, its records sent back to
  this process's store (Ray is imported only when a sweep asks for it).
"""

from core.run.build import build_optimizers, effective_threads, make_adapter, model_prices, with_costs
from core.run.execute import evaluate_score, execute_run
from core.run.manager import RunManager, get_manager
from core.run.observer import ModelUsage, RunObserver, usage_delta
from core.run.recorder import RoundRecorder, best_index
from core.run.supervisor import CANCEL_GRACE_S, describe_exit
from core.run.worker import WorkerJob
from core.store.records import RunOutcome

__all__ = [
    "CANCEL_GRACE_S",
    "ModelUsage",
    "RoundRecorder",
    "RunManager",
    "RunObserver",
    "RunOutcome",
    "WorkerJob",
    "best_index",
    "build_optimizers",
    "describe_exit",
    "effective_threads",
    "evaluate_score",
    "execute_run",
    "get_manager",
    "make_adapter",
    "model_prices",
    "usage_delta",
    "with_costs",
]
