"""BetterTogether compiled in the test process, every round recorded in a store: what the worker does for a
run, without the worker, for tests that look at the compiled candidates and the optimizers afterwards."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from core.config.schema import RunConfig
from core.plan.prepare import PreparedRun, prepare_run
from core.run.bettertogether import StudioBetterTogether
from core.run.build import build_optimizers, make_adapter
from core.run.execute import step_events
from core.run.observer import RunObserver
from core.run.recorder import RoundRecorder
from core.store import Store


@dataclass
class Compiled:
    config: RunConfig
    prepared: PreparedRun
    store: Store
    run_id: int
    recorder: RoundRecorder
    optimizers: dict[str, Any]  # step key -> the optimizer instance (one per key, shared by its steps)
    adapter: Any
    program: dspy.Module  # what BetterTogether returned


def compile_recorded(config: RunConfig, folder: Path, name: str = "compiled") -> Compiled:
    prepared = prepare_run(config)
    store = Store(folder / "runs.db")
    run_id = store.create_run(name, config)
    cancel = threading.Event()
    observer = RunObserver(cancel, prepared.runtimes)
    recorder = RoundRecorder(store, run_id, config, observer, folder / "run", cancel)
    adapter = make_adapter(prepared.runtimes)
    with recorder.evidence, dspy.context(lm=prepared.context_lm, adapter=adapter, callbacks=[observer]):
        optimizers = build_optimizers(prepared, recorder.weight_hooks(), adapter, events=step_events(recorder))
        program = StudioBetterTogether(prepared.metric, recorder, **optimizers).compile(
            prepared.program, trainset=list(prepared.split.train), valset=list(prepared.split.val), num_threads=1,
            seed=config.seed, strategy=config.strategy)
    return Compiled(config, prepared, store, run_id, recorder, optimizers, adapter, program)
