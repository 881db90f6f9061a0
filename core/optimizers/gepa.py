"""The ``gepa`` prompt step: DSPy's GEPA (reflective prompt evolution, ``dspy.GEPA`` on the ``gepa``
package), every predictor on its own LM.

GEPA runs the program on a few training examples, shows a *reflection LM* what each predictor was
asked, what it answered and the metric's feedback, and asks it for a better instruction; a proposal
that does better on that minibatch is scored on the whole validation set and joins the candidates
(a Pareto front per validation example). It returns the candidate with the best validation score:
the current program when no proposal beats it.

What the Studio adds (``StudioGEPA``):

* the feedback metric (``FeedbackMetric``): the run's metric, plus, for the predictor GEPA reflects
  on, words about the example: for the built-in metrics, which label field was wrong, what was
  expected and what came out (``Metric.feedback``); for any other metric, its score;
* the run's adapter for the reflection calls (DSPy's default there is a JSON adapter, which the
  embedded models' grammar-constrained output does not follow);
* live progress: GEPA's callbacks (``gepa.core.callbacks``) become ``gepa`` events of the run
  (instructions proposed, candidates kept, best validation score so far, metric calls of the budget);
* the candidates in the round's evidence: one ``candidates`` event per step with every kept
  candidate's instructions and validation score, and the proposals the minibatch turned down.

Per-predictor LMs: GEPA builds every candidate with ``Module.deepcopy()``, which keeps each
predictor's ``lm`` (DSPy's random search drops them through ``reset_copy()``; see ``prompt.py``);
``tests/optimizers/test_gepa.py`` checks that a two-LM program keeps both LMs, in the calls made
during the step and in the result. Cancel: the run's cancel is a ``BaseException`` raised from the LM
call (``core.run.observer``); GEPA 0.1.4 catches only ``Exception`` (in its iteration loop and around
each reflection), so it passes through, and the step stops within the LM call in progress.

Budget: ``auto`` (light, medium, heavy) is converted into metric calls the way DSPy does
(``gepa_auto_budget``); a metric call is one run of the program on one example (one LM call per
predictor). The estimate adds one reflection call per iteration and the round's evaluation.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dspy
from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer

from core.config.steps import STEP_TYPES, GepaSettings
from core.lms.catalog import MODEL_PREFIX
from core.optimizers.entry import BuildContext, EstimateContext, Events, Optimizer, StepCost, no_events
from core.programs.metrics import Metric

if TYPE_CHECKING:  # the table of optimizers is read before the configuration's schema: never imported here
    from core.config.schema import RunDraft

logger = logging.getLogger(__name__)

AUTO_CANDIDATES = {"light": 6, "medium": 12, "heavy": 18}
"""Candidates per ``auto`` preset (DSPy 3.4.1's ``dspy.teleprompt.gepa.gepa.AUTO_RUN_SETTINGS``)."""

# Measured with two real runs of a ``g`` step on the classifier sample, SmolLM2-135M serving the predictor and
# reflecting (train/val 10/5 with 40 metric calls, 20/10 with 80; 30 s and 174 s on 2 CPU cores, December 2026).
TINY_REFLECTION = (
    "The reflection LM {lm} is a tiny embedded model: GEPA needs an LM that reads the feedback and writes a better "
    "instruction. Measured on the classifier sample with SmolLM2-135M reflecting (two runs, 40 and 80 metric "
    "calls): of its 15 proposals, 14 were the preamble 'The instructions (I) provided to the assistant are:' and "
    "one 'The text is a product of a product.'; none was an instruction (the one kept moved the validation score "
    "by one example of 10). Pick a larger (hosted) LM as reflection_lm for GEPA to help."
)


def gepa_auto_budget(num_preds: int, num_candidates: int, valset_size: int, minibatch_size: int = 35,
                     full_eval_steps: int = 5) -> int:
    """Metric calls of an ``auto`` preset, as DSPy 3.4.1's ``GEPA.auto_budget`` computes them: the seed's
    validation, ~5 trials per candidate to bootstrap, ``N`` minibatch evaluations of 35 and periodic full
    validations, where ``N`` grows with the predictors and the candidates."""
    trials = int(max(2 * (num_preds * 2) * math.log2(num_candidates), 1.5 * num_candidates))
    total = valset_size + num_candidates * 5 + trials * minibatch_size
    if trials == 0:
        return total
    periodic = (trials + 1) // full_eval_steps + 1
    extra = 1 if trials < full_eval_steps else 0
    return total + (periodic + extra) * valset_size


def budget_calls(s: GepaSettings, predictors: int, val: int) -> int:
    """The metric calls the step may spend: ``max_metric_calls``, or what ``auto`` gives for this program."""
    kind, value = s.budget
    if kind == "max_metric_calls":
        return int(value)
    return gepa_auto_budget(max(predictors, 1), AUTO_CANDIDATES[str(value)], val)


def build(s: GepaSettings, ctx: BuildContext) -> Any:
    kind, value = s.budget
    return StudioGEPA(
        metric=FeedbackMetric(ctx.metric),
        reflection_lm=ctx.teacher(s.reflection_lm) or ctx.context_lm,  # named LM, else the large role's
        adapter=ctx.adapter,
        events=ctx.events,
        num_threads=ctx.threads,
        seed=ctx.seed,
        reflection_minibatch_size=s.reflection_minibatch_size,
        use_merge=s.use_merge,
        **{kind: value},
    )


def estimate(s: GepaSettings, ctx: EstimateContext) -> StepCost:
    """The budget's metric calls (one LM call per predictor each), one reflection call per iteration (an
    iteration spends at least two minibatches) and the evaluation of the kept program. The current program's
    validation (GEPA's seed) and the kept one's repeat calls made before: the call cache answers them."""
    p, v = ctx.predictors, ctx.val
    budget = budget_calls(s, p, v)
    reflections = max(budget - v, 0) // (2 * s.reflection_minibatch_size)
    calls = budget * p + reflections + p * v
    cached = min(2 * p * v, calls) if ctx.cached else 0
    return StepCost(int(calls), int(cached))


class FeedbackMetric:
    """The run's metric as GEPA's feedback metric ``metric(gold, pred, trace, pred_name, pred_trace)``.

    Scoring (``pred_name`` None) returns the run's score; feedback for a predictor returns
    ``dspy.Prediction(score=..., feedback=...)``: for a built-in metric, per label field whether it was
    right and what was expected and what came out; for another metric, its score (a metric that returns
    its own feedback keeps it). Plain attributes only: deep-copyable like the metric it wraps."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.name = getattr(metric, "__name__", type(metric).__name__)
        self.__name__ = f"feedback({self.name})"
        try:
            inspect.signature(metric).bind(None, None, None, None, None)
            self.five = True  # it takes GEPA's pred_name and pred_trace too
        except (TypeError, ValueError):
            self.five = False

    def __call__(self, gold: Any, pred: Any, trace: Any = None, pred_name: str | None = None,
                 pred_trace: Any = None) -> Any:
        args = (gold, pred, trace, pred_name, pred_trace) if self.five else (gold, pred, trace)
        result = self.metric(*args)
        if isinstance(result, (dict, dspy.Prediction)):  # a metric that gives its own feedback
            score, own = float(result["score"]), result.get("feedback")
        else:
            score, own = float(result), None
        if pred_name is None:
            return score
        return dspy.Prediction(score=score, feedback=own or self.feedback(gold, pred, score))

    def feedback(self, gold: Any, pred: Any, score: float) -> str:
        if isinstance(self.metric, Metric):
            return self.metric.feedback(gold, pred)
        return f"The run's metric {self.name} scored this answer {score:g} (1 is best)."


class StudioGEPA(dspy.GEPA):
    """DSPy's GEPA with the run's adapter for reflection, its progress and candidates as the run's events."""

    def __init__(self, *, metric: FeedbackMetric, reflection_lm: Any, adapter: Any = None,
                 events: Events = no_events, **kwargs: Any) -> None:
        self.events = events
        self.progress = GepaProgress(events, budget=lambda: self.max_metric_calls)
        super().__init__(
            metric=metric,
            reflection_lm=reflection_lm,
            instruction_proposer=InstructionProposer(adapter=adapter),
            track_stats=True,  # the candidates and their scores, for the round's evidence
            gepa_kwargs={"callbacks": [self.progress]},
            **kwargs,
        )

    def compile(self, student: dspy.Module, *, trainset: list, teacher: Any = None,
                valset: list | None = None) -> dspy.Module:
        self.progress.reset()
        model = getattr(self.reflection_lm, "model", None)
        if isinstance(model, str) and model.startswith(MODEL_PREFIX):  # a shipped model (a local one may be large)
            self.events("status", tiny_reflection_warning(str(model)), {"warning": "tiny_reflection_lm"})
        program = super().compile(student, trainset=trainset, teacher=teacher, valset=valset)
        results = program.__dict__.pop("detailed_results", None)  # candidate programs: not kept on the result
        if results is not None:
            self._record_candidates(results)
        return program

    def _record_candidates(self, results: Any) -> None:
        """One ``candidates`` event: every kept candidate's instructions and validation score (0-100), which
        one GEPA returned, and the proposals the minibatch turned down."""
        candidates = [{
            "index": i,
            "score": round(100 * float(score), 2),
            "parents": [p for p in (results.parents[i] or []) if p is not None],
            "instructions": {name: pred.signature.instructions for name, pred in program.named_predictors()},
            "metric_calls": results.discovery_eval_counts[i],
        } for i, (program, score) in enumerate(zip(results.candidates, results.val_aggregate_scores, strict=True))]
        best = results.best_idx
        seed = candidates[0]["score"]
        self.events("candidates", f"GEPA kept {len(candidates) - 1} of {self.progress.proposed} proposed instructions "
                    f"as candidates; returned candidate {best} ({candidates[best]['score']:.1f} on validation, "
                    f"the current program {seed:.1f})",
                    {"optimizer": "gepa", "best": best, "candidates": candidates,
                     "rejected": list(self.progress.rejected), "proposed": self.progress.proposed,
                     "metric_calls": results.total_metric_calls, "budget": self.max_metric_calls})


class GepaProgress:
    """GEPA's callbacks (``gepa.core.callbacks.GEPACallback``, the methods it looks up by name) as the run's
    ``gepa`` events: one per iteration and one per candidate scored on the validation set."""

    def __init__(self, events: Events, budget: Callable[[], int | None]) -> None:
        self.events = events
        self.budget = budget
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.proposed = 0
        self.scores: dict[int, float] = {}  # candidate -> validation score (0-100)
        self.rejected: list[dict[str, Any]] = []
        self._proposal: dict[str, str] = {}
        self._reported: tuple | None = None

    def on_budget_updated(self, event: dict[str, Any]) -> None:
        self.calls = int(event["metric_calls_used"])

    def on_proposal_end(self, event: dict[str, Any]) -> None:
        self.proposed += 1
        self._proposal = dict(event["new_instructions"])

    def on_candidate_rejected(self, event: dict[str, Any]) -> None:
        self.rejected.append({"instructions": self._proposal, "minibatch_before": event["old_score"],
                              "minibatch_after": event["new_score"]})

    def on_valset_evaluated(self, event: dict[str, Any]) -> None:
        self.scores[int(event["candidate_idx"])] = round(100 * float(event["average_score"]), 2)
        if not self.calls:  # the seed's validation comes before the first budget update
            self.calls = int(event["num_examples_evaluated"])
        self._report(int(event["iteration"]))

    def on_iteration_end(self, event: dict[str, Any]) -> None:
        self._report(int(event["iteration"]))

    def _report(self, iteration: int) -> None:
        budget = self.budget()
        best = max(self.scores.values()) if self.scores else None
        state = (self.proposed, len(self.scores), best, self.calls)
        if state == self._reported:
            return  # an iteration that ends with a candidate's validation: reported already
        self._reported = state
        shown = "" if best is None else f", best {best:.1f} on validation"
        self.events("gepa", f"GEPA iteration {iteration}: {self.proposed} instructions proposed, "
                            f"{max(len(self.scores) - 1, 0)} kept as candidates{shown}, "
                            f"{self.calls}/{budget} metric calls", {
            "iteration": iteration, "proposed": self.proposed, "candidates": max(len(self.scores) - 1, 0),
            "best": best, "seed": self.scores.get(0), "calls": self.calls, "budget": budget,
        })


def reflection_lm_name(doc: RunDraft, settings: GepaSettings) -> str | None:
    """The LM the step reflects with: ``reflection_lm``, else the first large-role LM, else the first LM."""
    if settings.reflection_lm:
        return settings.reflection_lm
    large = [a.lm for a in doc.predictors.values() if a.role == "large"]
    return large[0] if large else next(iter(doc.lms), None)


def reflection_warning(doc: RunDraft, settings: GepaSettings) -> str | None:
    """A warning when the step would reflect with an embedded (tiny) model; None otherwise."""
    name = reflection_lm_name(doc, settings)
    spec = doc.lms.get(name) if name else None
    if getattr(spec, "kind", None) != "embedded":
        return None
    return tiny_reflection_warning(f"'{name}' ({spec.model})")


def tiny_reflection_warning(lm: str) -> str:
    return TINY_REFLECTION.format(lm=lm)


def warnings(s: GepaSettings, doc: RunDraft) -> list[str]:
    warning = reflection_warning(doc, s)
    return [warning] if warning else []


OPTIMIZER = Optimizer(STEP_TYPES["gepa"], build=build, estimate=estimate, warnings=warnings)
