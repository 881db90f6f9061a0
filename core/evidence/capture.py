"""Capturing per-example evidence while DSPy's ``Evaluate`` runs: a callback, armed only during our own
evaluations, that ties every LM call to the example being answered.

Why a callback and thread-local state: ``Evaluate`` answers examples in worker threads, one example at
a time per thread (``program(**example.inputs())``, then the metric). DSPy's callbacks fire in those
threads, so the first module call of the evaluated program in a thread opens a record for that thread,
and every LM call the thread makes until the next one belongs to it; the innermost named predictor on
the thread's module stack says which predictor made the call. After the evaluation, records are
matched to examples by the prediction object ``Evaluate`` returned (or, for an example that raised, by
its inputs), scored with the metric's score, and written in one transaction (``add_evaluation``) by a
writer thread of the collector, so that the next round does not wait for the write; leaving the
collector's ``with`` block (the run's end) waits until everything is written.

Tokens come from DSPy's usage tracker, called inside the LM call in the same thread: ``UsageTap``
forwards to the run's own tracker and leaves the last usage on the thread for the call's record.
An observer must never break the run: every failure here is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import AdapterParseError

from core.store import Store, now_iso
from core.store.evidence import ExampleResult, LMCall, NewEvaluation, add_evaluation, add_training_rows
from core.store.records import TrainingRow
from core.store.secrets import redact

logger = logging.getLogger(__name__)

PASS_SCORE = 1.0
"""An example passes when the metric gives it full marks (metrics score in [0, 1])."""


@dataclass
class _Record:
    """What one thread saw while answering one example."""

    inputs: dict[str, Any]
    calls: list[LMCall] = field(default_factory=list)
    prediction: Any = None
    exception: BaseException | None = None
    done: bool = False


@dataclass
class EvaluationScope:
    """One armed evaluation; the caller sets ``result`` (Evaluate's return), ``score`` and ``error``."""

    split: str
    label: str
    round_index: int | None
    program: Any
    devset: list
    program_label: str | None = None
    names: dict[int, str] = field(default_factory=dict)
    records: list[_Record] = field(default_factory=list)
    result: Any = None
    score: float | None = None
    error: str | None = None
    started_at: str = field(default_factory=now_iso)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[str, str | None]] = []  # (call_id, predictor name or None)
        self.record: _Record | None = None
        self.pending: dict[str, tuple[str | None, str | None, Any, float]] = {}
        self.usage: dict[str, Any] | None = None


def _inputs_key(inputs: Any) -> str:
    return json.dumps(dict(inputs), sort_keys=True, default=str)


def _completion(outputs: Any) -> str | None:
    if outputs is None:
        return None
    first = outputs[0] if isinstance(outputs, list | tuple) and outputs else outputs
    if isinstance(first, str):
        return first
    if isinstance(first, dict) and isinstance(first.get("text"), str):
        return first["text"]
    return json.dumps(first, default=str, ensure_ascii=False)


def _messages(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    messages = inputs.get("messages")
    if messages:
        return [m if isinstance(m, dict) else {"role": "?", "content": str(m)} for m in messages]
    prompt = inputs.get("prompt")
    return [{"role": "user", "content": str(prompt)}] if prompt else []


def _tokens(usage: dict[str, Any] | None, *names: str) -> int | None:
    if not usage:
        return None
    for name in names:
        if usage.get(name) is not None:
            return int(usage[name])
    return None


class EvidenceCollector(BaseCallback):
    """Records inputs, gold, outputs, score, error and every LM call of each example of our evaluations."""

    def __init__(self, store: Store, run_id: int) -> None:
        self.store = store
        self.run_id = run_id
        self.round_index = 0  # the round whose validation runs next (set at each step start)
        self.written: list[int] = []  # evaluation ids written, in order
        self.write_seconds: list[float] = []  # time the writer spent on each (matching and writing)
        self._scope: EvaluationScope | None = None
        self._local = _ThreadState()
        self._queue: queue.Queue[EvaluationScope | None] = queue.Queue()
        self._writer: threading.Thread | None = None

    def __enter__(self) -> EvidenceCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def flush(self, timeout: float | None = 300) -> None:
        """Wait until every finished evaluation is written (the writer thread then ends)."""
        writer = self._writer
        if writer is None:
            return
        self._queue.put(None)
        writer.join(timeout)
        if writer.is_alive():
            logger.error("the evidence of run %s is still being written after %s s", self.run_id, timeout)
        self._writer = None

    def _enqueue(self, scope: EvaluationScope) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._queue = queue.Queue()
            self._writer = threading.Thread(target=self._drain, args=(self._queue,), daemon=True,
                                            name=f"evidence-{self.run_id}")
            self._writer.start()
        self._queue.put(scope)

    def _drain(self, scopes: queue.Queue[EvaluationScope | None]) -> None:
        try:
            while (scope := scopes.get()) is not None:
                self._write(scope)
        finally:
            self.store.close()  # this thread's connection

    def __deepcopy__(self, memo: dict) -> EvidenceCollector:
        return self

    # -- scopes ----------------------------------------------------------------------------------
    @contextmanager
    def evaluation(self, split: str, label: str, program: Any, devset: list, *,
                   program_label: str | None = None, round_index: int | None = None) -> Iterator[EvaluationScope]:
        """Arm the capture for one evaluation of ``program`` on ``devset``; written when the block ends.
        A validation is of the round in progress; a test evaluation names its round (``round_index``) or none."""
        scope = EvaluationScope(split=split, label=label, round_index=self.round_index if split == "val" else round_index,
                                program=program, devset=list(devset), program_label=program_label)
        try:
            scope.names = {id(p): name for name, p in program.named_predictors()}
        except Exception:  # noqa: BLE001 - a program without predictors still gets results
            logger.debug("cannot list the predictors of %r", program, exc_info=True)
        self._scope = scope
        try:
            yield scope
        finally:
            self._scope = None
            self._enqueue(scope)

    def _write(self, scope: EvaluationScope) -> None:
        started = time.perf_counter()
        try:
            results = build_results(scope)
            new = NewEvaluation(run_id=self.run_id, split=scope.split, round_index=scope.round_index,
                                label=scope.label, program=scope.program_label, started_at=scope.started_at,
                                score=scope.score, error=scope.error)
            self.written.append(self._forwarded("add_evaluation", add_evaluation)(new, results))
            self.write_seconds.append(time.perf_counter() - started)
        except Exception:  # noqa: BLE001 - evidence must never break the run
            logger.exception("cannot record the evidence of evaluation %r", scope.label)

    def training_rows(self, model: str, rows: list[TrainingRow]) -> None:
        """Record what the weight step of the current round trains ``model`` on."""
        try:
            self._forwarded("add_training_rows", add_training_rows)(self.run_id, self.round_index, model, rows)
        except Exception:  # noqa: BLE001 - evidence must never break the run
            logger.exception("cannot record the training rows of %s", model)

    def _forwarded(self, name: str, write: Any) -> Any:
        """``write`` on this collector's store; a Ray task's store proxy (``core.run.ray_remote``) has a method
        of that name that sends the whole write to the Studio that started the run."""
        forward = getattr(self.store, name, None)
        return forward if forward is not None else lambda *args: write(self.store, *args)

    # -- callbacks -------------------------------------------------------------------------------
    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        scope = self._scope
        if scope is None:
            return
        state = self._local
        if not state.stack:
            if instance is not scope.program:
                return
            record = _Record(inputs=dict(inputs.get("kwargs") or {}))
            state.record = record
            with scope.lock:
                scope.records.append(record)
        state.stack.append((call_id, scope.names.get(id(instance))))

    def on_module_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        state = self._local
        if not state.stack or state.stack[-1][0] != call_id:
            return
        state.stack.pop()
        if not state.stack and state.record is not None:
            state.record.prediction = outputs
            state.record.exception = exception
            state.record.done = True

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        state = self._local
        if self._scope is None or state.record is None:
            return
        predictor = next((name for _, name in reversed(state.stack) if name), None)
        state.usage = None
        state.pending[call_id] = (predictor, getattr(instance, "model", None), _messages(inputs), time.perf_counter())

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        state = self._local
        pending = state.pending.pop(call_id, None)
        if pending is None or state.record is None:
            return
        predictor, model, messages, started = pending
        usage, state.usage = state.usage, None
        state.record.calls.append(LMCall(
            seq=len(state.record.calls), predictor=predictor, model=model, messages=messages,
            completion=_completion(outputs), input_tokens=_tokens(usage, "prompt_tokens", "input_tokens"),
            output_tokens=_tokens(usage, "completion_tokens", "output_tokens"),
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            error=None if exception is None else redact(f"{type(exception).__name__}: {exception}"[:2000]),
        ))

    def note_usage(self, usage: dict[str, Any]) -> None:
        if self._scope is not None:
            self._local.usage = usage


class UsageTap:
    """DSPy usage tracker that forwards to the run's tracker and hands each call's tokens to the collector."""

    def __init__(self, inner: Any, collector: EvidenceCollector) -> None:
        self.inner = inner
        self.collector = collector

    def __deepcopy__(self, memo: dict) -> UsageTap:
        return self

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.inner.add_usage(lm, usage_entry)
        self.collector.note_usage(dict(usage_entry or {}))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextmanager
def evidence_scope(collector: EvidenceCollector | None, split: str, label: str, program: Any, devset: list, *,
                   program_label: str | None = None, round_index: int | None = None) -> Iterator[EvaluationScope]:
    """``collector.evaluation(...)``, or a scope that records nothing when there is no collector."""
    if collector is None:
        yield EvaluationScope(split=split, label=label, round_index=None, program=program, devset=[])
        return
    with collector.evaluation(split, label, program, devset, program_label=program_label,
                              round_index=round_index) as scope:
        yield scope


# -- matching records to examples -------------------------------------------------------------------


def _error_kind(record: _Record) -> str | None:
    if record.exception is None:
        return None
    if isinstance(record.exception, AdapterParseError):
        return "parse"
    if any(call.error for call in record.calls):
        return "lm"
    return "program"


def _outputs(prediction: Any) -> dict[str, Any]:
    if prediction is None or not hasattr(prediction, "items"):
        return {}
    return {k: v for k, v in prediction.items() if not str(k).startswith("dspy_")}


def _split(example: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inputs, gold labels) of a ``dspy.Example`` in one pass (``inputs()``/``labels()`` copy it twice)."""
    keys = getattr(example, "_input_keys", None)
    if keys is None:
        return dict(example.inputs()), dict(example.labels())
    inputs, gold = {}, {}
    for key, value in example.items():
        (inputs if key in keys else gold)[key] = value
    return inputs, gold


def build_results(scope: EvaluationScope) -> list[ExampleResult]:
    """One ``ExampleResult`` per example of the devset that was answered (all of them, unless cancelled)."""
    results = list(getattr(scope.result, "results", None) or [])
    records = [r for r in scope.records if r.done]
    by_prediction = {id(r.prediction): r for r in records if r.prediction is not None}
    by_inputs: dict[str, deque[_Record]] | None = None  # built only if an example is not matched by prediction
    used: set[int] = set()
    out = []
    for index, example in enumerate(scope.devset):
        scored = results[index] if index < len(results) else None
        record = by_prediction.get(id(scored[1])) if scored is not None else None
        inputs, gold = _split(example)
        if record is None:
            if by_inputs is None:
                by_inputs = defaultdict(deque)
                for r in records:
                    by_inputs[_inputs_key(r.inputs)].append(r)
            waiting = by_inputs.get(_inputs_key(inputs), deque())
            while waiting and id(waiting[0]) in used:
                waiting.popleft()
            record = waiting.popleft() if waiting else None
        if record is None and scored is None:
            continue  # never answered (the evaluation stopped first)
        if record is not None:
            used.add(id(record))
        kind = _error_kind(record) if record is not None else None
        score = None if scored is None else float(scored[2])
        prediction = scored[1] if scored is not None and kind is None else getattr(record, "prediction", None)
        error = None
        if record is not None and record.exception is not None:
            error = redact(f"{type(record.exception).__name__}: {record.exception}"[:2000])
        out.append(ExampleResult(
            index=index, inputs=inputs, gold=gold,
            outputs=_outputs(prediction), score=score,
            passed=None if score is None else (kind is None and score >= PASS_SCORE),
            error=error, error_kind=kind, calls=tuple(record.calls) if record is not None else (),
        ))
    return out


class CallbackTee(BaseCallback):
    """Several callbacks registered as one.

    Why: for every call DSPy picks each registered callback's handler with ``isinstance`` checks, one
    of them against a ``typing`` Protocol (slow); a second callback object doubles that cost, which
    measured at about 30 % of an evaluation on a fast LM. One object forwarding to both pays it once,
    and an event goes only to the callbacks that override its handler. The callbacks run in the order
    given; an exception (a cancel) from one stops the others, as it would stop DSPy's own loop.
    """

    def __init__(self, *callbacks: BaseCallback) -> None:
        self.callbacks = callbacks
        self._handlers = {
            name: tuple(getattr(c, name) for c in callbacks if getattr(type(c), name, None) is not default)
            for name, default in _HANDLERS.items()
        }

    def __deepcopy__(self, memo: dict) -> CallbackTee:
        return self


def _forward(name: str):
    def handler(self: CallbackTee, *args: Any, **kwargs: Any) -> None:
        for method in self._handlers[name]:
            method(*args, **kwargs)

    handler.__name__ = name
    return handler


_HANDLERS = {n: f for n, f in vars(BaseCallback).items() if n.startswith("on_") and callable(f)}
for _name in _HANDLERS:
    setattr(CallbackTee, _name, _forward(_name))
