"""A deterministic scripted LM for fast tests of the logic (never the product's default).

It honours DSPy's engine + provider contract like the embedded models do:

* inference reads the ChatAdapter prompt (input fields, requested output fields, demos as extra
  turns) and answers in the ChatAdapter format;
* a base model copies the outputs of the demo whose inputs overlap most with the current inputs,
  else the demos' most common value per field (so prompt optimization that adds demos helps),
  and without demos echoes its inputs for text fields;
* fine-tuning (the provider) memorises the training rows; the fine-tuned model answers with the
  outputs of the nearest training row (so weight steps change behaviour);
* ``hints`` (keyword -> outputs) give the base model a weak, partial competence, so that some
  traces are correct before any optimization, as with a real LM;
* ``follows`` (phrase -> hints) are instructions the model follows: when the system message (where
  the adapter puts a predictor's instructions) holds the phrase, those hints apply as well, ahead of
  ``hints`` (so that an optimizer that rewrites instructions can find one that helps);
* options simulate slow calls (``delay``), an LM that starts failing after N calls
  (``fail_after``), unparseable answers (every ``garble_every``-th call) and slow training
  steps (``train_step_delay``);
* ``crash_at_round=k`` makes the worker process die when round k starts (``crash_signal``: a
  signal name such as ``"SIGKILL"`` or ``"SIGSEGV"`` sent to itself, or ``"hang"`` to block and
  ignore cancel), to test that a native crash fails only its own run. With ``crash_marker`` (a
  file path) it crashes only once: the file is created before crashing, and a resumed run that
  finds it goes on. Only this test engine honours it (the runner calls ``on_round_start`` on any
  engine that has one).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.provider import Provider, TrainingJob
from dspy.lm15 import Message, Response, TextPart, Usage

from core.errors import LMError, StepCancelled, shown
from core.lms import catalog
from core.lms.grammar import literal_choices
from core.lms.lora.params import train_value

_FIELD_RE = re.compile(r"\[\[ ## (\w+) ## \]\]")
_WORD_RE = re.compile(r"\w+")
SCRIPTED_PREFIX = "scripted/"  # the test LM's names: scripted/<name>; fine-tunes follow catalog's :ft- rule


def parse_sections(text: str) -> dict[str, str]:
    """Split a ChatAdapter message into ``{field: value}`` by its ``[[ ## field ## ]]`` markers."""
    text = text.split("\n\nRespond with the corresponding output fields", 1)[0]
    parts = _FIELD_RE.split(text)
    sections: dict[str, str] = {}
    for name, value in zip(parts[1::2], parts[2::2], strict=False):
        if name == "completed":
            continue
        sections[name] = value.strip()
    return sections


def requested_outputs(last_user: str) -> list[str]:
    """Output field names from ChatAdapter's closing instruction in the last user message."""
    tail = last_user.split("Respond with the corresponding output fields", 1)
    if len(tail) < 2:
        return []
    return [name for name in _FIELD_RE.findall(tail[1]) if name != "completed"]


def output_types(system: str) -> dict[str, str]:
    """Output field types from the system message (``1. `label` (Literal[...]): ...``)."""
    block = system.split("Your output fields are:", 1)
    if len(block) < 2:
        return {}
    block = block[1].split("All interactions will be structured", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"`(\w+)` \(([^)]*(?:\)[^:\n]*)?)\)", block)}


def _tokens(text: str) -> set[str]:
    return {t.lower() for t in _WORD_RE.findall(text)}


def _overlap(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / math.sqrt(len(a) * len(b))


@dataclass
class _Memory:
    """Examples an answer can be copied from: (input tokens, outputs)."""

    rows: list[tuple[set[str], dict[str, str]]] = field(default_factory=list)

    def nearest(self, query: set[str], wanted: list[str], threshold: float) -> dict[str, str] | None:
        best, best_score = None, threshold
        for tokens, outputs in self.rows:
            if not all(name in outputs for name in wanted):
                continue
            score = _overlap(query, tokens)
            if score > best_score:
                best, best_score = outputs, score
        return best

    def majority(self, name: str) -> str | None:
        """The most frequent value of an output field among the rows (ties: first seen)."""
        counts: dict[str, int] = {}
        for _, outputs in self.rows:
            if name in outputs:
                counts[outputs[name]] = counts.get(outputs[name], 0) + 1
        return max(counts, key=counts.__getitem__) if counts else None


def row_from_messages(messages: list[dict[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """(inputs, outputs) of a chat training row: last user turn and the assistant answer."""
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
    return parse_sections(user), parse_sections(answer)


class ScriptedEngine:
    """Engine for ``scripted/...`` models. One instance per option set, shared by all copies."""

    _instances: dict[str, ScriptedEngine] = {}
    _finetuned: dict[str, _Memory] = {}
    _artifacts: dict[str, Path] = {}
    _lock = threading.Lock()

    def __init__(
        self,
        delay: float = 0.0,
        fail_after: int | None = None,
        demo_threshold: float = 0.3,
        tag: str = "",
        hints: dict[str, dict[str, str]] | None = None,
        garble_every: int | None = None,
        crash_at_round: int | None = None,
        crash_signal: str = "SIGKILL",
        crash_marker: str | None = None,
        follows: dict[str, dict[str, dict[str, str]]] | None = None,
    ):
        self.follows = {phrase: {k.lower(): v for k, v in hints.items()} for phrase, hints in (follows or {}).items()}
        self.crash_at_round = crash_at_round
        self.crash_signal = crash_signal
        self.crash_marker = crash_marker
        self.garble_every = garble_every
        self.hints = {k.lower(): v for k, v in (hints or {}).items()}
        self.tag = tag  # separates call counters of otherwise identical engines (tests)
        self.delay = delay
        self.fail_after = fail_after
        self.demo_threshold = demo_threshold
        self.calls = 0
        self.calls_by_model: dict[str, int] = {}
        self._count_lock = threading.Lock()

    # -- sharing ---------------------------------------------------------------------------------
    @classmethod
    def shared(cls, **options: Any) -> ScriptedEngine:
        key = json.dumps(options, sort_keys=True)
        with cls._lock:
            if key not in cls._instances:
                cls._instances[key] = cls(**options)
            return cls._instances[key]

    def options(self) -> dict[str, Any]:
        return {
            "delay": self.delay,
            "fail_after": self.fail_after,
            "demo_threshold": self.demo_threshold,
            "tag": self.tag,
            "hints": self.hints,
            "garble_every": self.garble_every,
            "crash_at_round": self.crash_at_round,
            "crash_signal": self.crash_signal,
            "crash_marker": self.crash_marker,
            "follows": self.follows,
        }

    def __deepcopy__(self, memo: dict) -> ScriptedEngine:
        return self

    def dump_state(self) -> dict[str, Any]:
        return self.options()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> ScriptedEngine:
        return cls.shared(**state)

    # -- crash simulation ------------------------------------------------------------------------
    def on_round_start(self, index: int) -> None:
        """Die (or hang) when round ``crash_at_round`` starts; once only when ``crash_marker`` is set."""
        if self.crash_at_round is None or index != self.crash_at_round:
            return
        if self.crash_marker:
            marker = Path(self.crash_marker)
            if marker.exists():
                return
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"crashed at round {index}\n", encoding="utf-8")
        if self.crash_signal == "hang":
            while True:  # blocks the run's thread: no LM call, so the cooperative cancel never fires
                time.sleep(1.0)
        os.kill(os.getpid(), signal.Signals[self.crash_signal])

    # -- fine-tuned models -----------------------------------------------------------------------
    @classmethod
    def register_finetuned(cls, model_name: str, artifact_dir: Path) -> None:
        """Serve ``model_name`` from the rows saved in ``artifact_dir/rows.json``."""
        rows = json.loads((Path(artifact_dir) / "rows.json").read_text(encoding="utf-8"))
        memory = _Memory([(_tokens(" ".join(r["inputs"].values())), r["outputs"]) for r in rows])
        with cls._lock:
            cls._finetuned[model_name] = memory
            cls._artifacts[model_name] = Path(artifact_dir)

    @classmethod
    def artifact_dir(cls, model_name: str) -> Path | None:
        return cls._artifacts.get(model_name)

    # -- inference -------------------------------------------------------------------------------
    def complete(self, request: Any) -> Response:
        with self._count_lock:
            self.calls += 1
            self.calls_by_model[request.model] = self.calls_by_model.get(request.model, 0) + 1
            count = self.calls
        if self.fail_after is not None and count > self.fail_after:
            raise RuntimeError(
                f"scripted LM failure: the server stopped answering after {self.fail_after} calls"
            )
        if self.delay:
            time.sleep(self.delay)
        if self.garble_every and count % self.garble_every == 0:
            text = "Sure! Here is my answer, in no particular format."
            return Response(id=None, model=request.model, message=Message.assistant([TextPart(text)]),
                            finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=9))
        if catalog.is_finetuned_name(request.model) and request.model not in self._finetuned:
            raise LMError(f"unknown fine-tuned model {shown(request.model)}; known: {sorted(self._finetuned)}")
        system = request.system if isinstance(request.system, str) else ""
        turns = [(m.role, m.text or "") for m in request.messages]
        text = self._answer(request.model, system, turns)
        prompt_tokens = len(_WORD_RE.findall(system)) + sum(len(_WORD_RE.findall(t)) for _, t in turns)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=prompt_tokens, output_tokens=len(_WORD_RE.findall(text))),
        )

    def stream(self, request: Any):  # pragma: no cover - DSPy streams only when asked
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        return None

    def _hinted(self, query: set[str], wanted: list[str], system: str = "") -> dict[str, str] | None:
        """Per output field, the value of the first hint keyword found in the inputs (the hints of the
        instructions it follows that ``system`` holds first)."""
        found: dict[str, str] = {}
        followed = [hints for phrase, hints in self.follows.items() if phrase in system]
        for keyword, outputs in [item for hints in followed for item in hints.items()] + list(self.hints.items()):
            if keyword in query:
                for name, value in outputs.items():
                    if name in wanted:
                        found.setdefault(name, value)
        return found or None

    def _answer(self, model: str, system: str, turns: list[tuple[str, str]]) -> str:
        last_user = next((t for r, t in reversed(turns) if r == "user"), "")
        wanted = requested_outputs(last_user)
        inputs = parse_sections(last_user)
        query = _tokens(" ".join(inputs.values()))
        demos = _Memory()
        for (r1, t1), (r2, t2) in zip(turns, turns[1:], strict=False):
            if r1 == "user" and r2 == "assistant":
                demos.rows.append((_tokens(" ".join(parse_sections(t1).values())), parse_sections(t2)))
        answer: dict[str, str] | None = None
        if model in self._finetuned:
            answer = self._finetuned[model].nearest(query, wanted, 0.0)
        if answer is None:
            answer = demos.nearest(query, wanted, self.demo_threshold)
        if answer is None:
            answer = self._hinted(query, wanted, system)
        types = output_types(system)
        values = {}
        for name in wanted:
            prior = demos.majority(name)
            if answer is not None and name in answer:
                values[name] = answer[name]
            elif prior is not None:
                values[name] = prior  # no similar demo: fall back on the demos' most common value
            elif name == "reasoning":
                values[name] = "Let me think step by step."
            elif types.get(name, "").startswith("list"):
                values[name] = json.dumps([v[:60] for v in inputs.values()][:2])
            else:
                values[name] = " ".join(inputs.values())[:200] or "unknown"
        for name, value in values.items():
            choices = literal_choices(types.get(name, "")) or ()
            if choices and value not in choices:
                # a Literal field answers one of its values: one named in the inputs, else the first
                text = " ".join(inputs.values()).lower()
                values[name] = next((c for c in choices if c.lower() in text), choices[0])
        body = "\n\n".join(f"[[ ## {name} ## ]]\n{value}" for name, value in values.items())
        return body + "\n\n[[ ## completed ## ]]"


class ScriptedTrainingJob(TrainingJob):
    def status(self) -> str:
        return "done" if self.done() else "running"


class ScriptedProvider(Provider):
    """Fine-tuning for scripted models: memorises rows, reports fake-but-monotone training progress."""

    def __init__(self, train_step_delay: float = 0.0):
        super().__init__()
        self.finetunable = True
        self.TrainingJob = ScriptedTrainingJob
        self.train_step_delay = train_step_delay
        self.finetuned_models: list[str] = []

    def __deepcopy__(self, memo: dict) -> ScriptedProvider:
        return self

    @staticmethod
    def is_provider_model(model: str) -> bool:
        return model.startswith(SCRIPTED_PREFIX)

    def finetune(
        self, job: Any, model: str, train_data: list[dict], train_data_format: Any, train_kwargs: dict
    ) -> str:
        output_dir = train_kwargs.get("output_dir")
        if not output_dir:
            raise LMError("fine-tuning needs train_kwargs['output_dir'] (the run's artifact folder)")
        if not train_data:
            raise LMError("fine-tuning needs at least one training row")
        progress = train_kwargs.get("progress")
        should_stop = train_kwargs.get("should_stop")
        batch_size = train_value(train_kwargs, "batch_size")
        steps = train_value(train_kwargs, "epochs") * math.ceil(len(train_data) / batch_size)
        max_steps = train_value(train_kwargs, "max_steps")
        if max_steps is not None:
            steps = min(steps, max_steps)
        for step in range(1, steps + 1):
            if should_stop and should_stop():
                raise StepCancelled(f"fine-tuning cancelled at step {step - 1} of {steps}")
            if self.train_step_delay:
                time.sleep(self.train_step_delay)
            if progress:
                progress(step, steps, round(2.0 / (1 + step), 4))
        base = catalog.base_model_name(model)
        new_name = catalog.finetune_of(model, uuid.uuid4().hex[:8])
        folder = Path(output_dir) / new_name.replace("/", "_").replace(":", "_")
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for row in train_data:
            inputs, outputs = row_from_messages(row["messages"])
            rows.append({"inputs": inputs, "outputs": outputs})
        (folder / "rows.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
        meta = {
            "base": base,
            "kind": "scripted",
            "file": "rows.json",
            "train": {"steps": steps, "rows": len(rows)},
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        ScriptedEngine.register_finetuned(new_name, folder)
        self.finetuned_models.append(new_name)
        return new_name


def make_lm(
    name: str = "base",
    delay: float = 0.0,
    fail_after: int | None = None,
    train_step_delay: float = 0.0,
    demo_threshold: float = 0.3,
    tag: str = "",
    hints: dict[str, dict[str, str]] | None = None,
    garble_every: int | None = None,
    crash_at_round: int | None = None,
    crash_signal: str = "SIGKILL",
    crash_marker: str | None = None,
    follows: dict[str, dict[str, dict[str, str]]] | None = None,
) -> dspy.LM:
    """Factory used by configs: ``{"kind": "factory", "factory": "core.lms.scripted:make_lm"}``."""
    engine = ScriptedEngine.shared(
        delay=delay, fail_after=fail_after, demo_threshold=demo_threshold, tag=tag, hints=hints,
        garble_every=garble_every, crash_at_round=crash_at_round, crash_signal=crash_signal,
        crash_marker=crash_marker, follows=follows,
    )
    provider = ScriptedProvider(train_step_delay=train_step_delay)
    return dspy.LM(f"{SCRIPTED_PREFIX}{name}", engine=engine, provider=provider, cache=False, num_retries=0)
