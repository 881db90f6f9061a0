"""Pre-run estimate of LM calls, time and cost of a run configuration.

The call counts follow the budgets measured with a scripted engine on DSPy 3.4.1
(shared/notes/dspy-3.4.1.md, "LM call budgets"): for P predictors, N train and V validation
examples one evaluation costs P x V calls; random search evaluates its C candidates plus three
fixed seeds on the validation set and bootstraps demos on the train set; MIPROv2 runs one full
validation per trial plus its proposal and bootstrap calls; a weight step collects P x N traces
and trains. Each step ends with the evaluation of its program. Times use a per-call time by LM
kind (embedded ~0.7 s, scripted ~0, hosted ~1 s divided by its parallel calls) and ~0.75 s per
training row on the CPU (a step of batch size B costs B rows; measured on the default run: 32 steps
of 4 rows without demos, about 460 tokens each, in 93 s on 2 cores). Costs are known only for
hosted LMs with prices. A ChainOfThought predictor's calls cost ``COT_CALL_FACTOR`` times a Predict
call on the embedded models (the estimate uses the program's mean per call). Not modelled: longer
training rows (long upstream outputs, demos kept), and ChainOfThought on hosted LMs.

The tiny-model path is modelled too: a stratified prompt step evaluates the current program, the
same without demos (after the first prompt step) and C stratified sets, but only the label
predictors' calls cost time, since the run's call cache answers the unchanged upstream
predictors once; a weight step whose label predictors learn from ``gold`` rows runs only the
upstream predictors over the training set; a stratified prompt step after a weight step without demos
bootstraps upstream demos (the program over a few training examples) and evaluates C sets of them.
``bench/quality.py`` prints this estimate's error against the measured wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import EmbeddedLMSpec, FactoryLMSpec, LiteLLMSpec, RunConfig
from core.optimizers.entry import EstimateContext
from core.optimizers.table import get_optimizer

SECONDS_PER_CALL = {"embedded": 0.7, "scripted": 0.002, "litellm": 1.0, "factory": 1.0}
# A ChainOfThought call on the embedded models against a Predict call: it writes a reasoning first. Measured in
# the gold trace collection of the default runs (idle, 30 November 2026): 30 `analyze` calls (ChainOfThought) in
# 37.1 s, 30 `extract` calls (Predict) in 22.1 s.
COT_CALL_FACTOR = 1.7
SECONDS_PER_TRAIN_ROW = {"embedded": 0.75, "scripted": 0.0025, "litellm": 0.0, "factory": 0.25}
SECONDS_PER_EXPORT = {"embedded": 20.0, "scripted": 0.0, "litellm": 0.0, "factory": 0.0}  # merge + GGUF + load
TOKENS_PER_CALL = (400, 80)  # assumed input/output tokens of one call, for costs
SCRIPTED_FACTORY_PREFIX = "core.lms.scripted:"


@dataclass(frozen=True)
class StepEstimate:
    """One round of the run: the baseline evaluation or one strategy step with its evaluation."""

    label: str
    optimizer: str
    calls: int
    seconds: float
    train_steps: int = 0
    cached: int = 0  # calls answered by the run's call cache (counted in calls, not in seconds)


@dataclass(frozen=True)
class Estimate:
    steps: list[StepEstimate]
    test_calls: int
    calls_per_lm: dict[str, int]
    seconds: float
    cost: float | None  # None when a paid LM has no prices
    sizes: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.steps) + self.test_calls


def lm_kind(spec: object) -> str:
    if isinstance(spec, EmbeddedLMSpec):
        return "embedded"
    if isinstance(spec, LiteLLMSpec):
        return "litellm"
    if isinstance(spec, FactoryLMSpec) and spec.factory.startswith(SCRIPTED_FACTORY_PREFIX):
        return "scripted"
    return "factory"


def split_sizes(config: RunConfig, n_rows: int | None) -> tuple[int, int, int]:
    """Train/val/test counts: the counts of the config, or its ratios applied to ``n_rows``."""
    sizes = config.data.split.sizes()
    if all(isinstance(s, int) for s in sizes):
        return tuple(int(s) for s in sizes)  # type: ignore[return-value]
    n = n_rows or 100
    val, test = round(sizes[1] * n), round(sizes[2] * n)
    return max(n - val - test if abs(sum(sizes) - 1) < 1e-6 else round(sizes[0] * n), 0), val, test


def _program_facts(config: RunConfig) -> tuple[list[str], float]:
    """The label predictors, and the mean time of one call of the program's predictors relative to a
    ``Predict`` call on an embedded model (a ChainOfThought predictor's calls cost ``COT_CALL_FACTOR``).
    A program that cannot be inspected without running user code: its last predictor, factor 1."""
    from core.programs import build_program

    labels = set(config.data.labels)
    if config.program.kind == "user_file":
        return list(config.predictors)[-1:], 1.0
    program = build_program(config.program)
    out, weights = [], []
    for name, predictor in program.named_predictors():
        fields = list(predictor.signature.output_fields)
        outputs = [n for n in fields if n != "reasoning"]
        if outputs and all(n in labels for n in outputs):
            out.append(name)
        weights.append(COT_CALL_FACTOR if "reasoning" in fields else 1.0)
    return out, (sum(weights) / len(weights) if weights else 1.0)


def estimate(config: RunConfig, n_rows: int | None = None) -> Estimate:
    """Estimate calls, time and cost of running ``config`` (``n_rows``: dataset size, for ratio splits)."""
    n, v, t = split_sizes(config, n_rows)
    p = len(config.predictors)
    label_names, call_factor = _program_facts(config)
    labelled = min(len(label_names), p)
    small_labelled = sum(1 for name in label_names if getattr(config.predictors.get(name), "role", None) == "small")
    upstream = p - labelled
    share = {name: sum(1 for a in config.predictors.values() if a.lm == name) / p for name in config.lms}
    kinds = {name: lm_kind(spec) for name, spec in config.lms.items()}

    def seconds_for(calls: int) -> float:
        total = 0.0
        for name, fraction in share.items():
            spec = config.lms[name]
            parallel = spec.num_threads if isinstance(spec, LiteLLMSpec) else 1
            per_call = SECONDS_PER_CALL[kinds[name]] * (call_factor if kinds[name] == "embedded" else 1.0)
            if kinds[name] == "scripted":
                per_call += float(spec.options.get("delay", 0.0))
            total += calls * fraction * per_call / parallel
        return total

    small_kind = next((kinds[a.lm] for a in config.predictors.values() if a.role == "small"), "embedded")
    cache = any(k == "embedded" for k in kinds.values())  # the embedded engine answers repeated calls once
    steps = [StepEstimate("baseline", "evaluation", p * v, seconds_for(p * v))]
    done: list[str] = []
    prompted = False
    served = 0  # label predictors fine-tuned without demos: later stratified prompt steps leave them as trained
    for key in config.step_keys():
        done.append(key)
        spec = config.optimizers[key]
        row = get_optimizer(spec.type)
        context = EstimateContext(predictors=p, train=n, val=v, labelled=labelled, cached=cache, prompted=prompted,
                                  export_seconds=SECONDS_PER_EXPORT[small_kind], served=served)
        cost = row.estimate(spec.settings, context)
        prompted = prompted or row.kind == "prompt"
        if row.kind == "weight" and getattr(spec.settings, "exclude_demos", False):
            served = small_labelled
        seconds = (seconds_for(cost.calls - cost.cached) + cost.train_rows * SECONDS_PER_TRAIN_ROW[small_kind]
                   + cost.extra_seconds)
        steps.append(StepEstimate(" -> ".join(done), spec.type, cost.calls, seconds, cost.train_steps, cost.cached))
    test_calls = 2 * p * t
    test_cached = upstream * t if cache else 0
    total_calls = sum(s.calls for s in steps) + test_calls
    seconds = sum(s.seconds for s in steps) + seconds_for(test_calls - test_cached)
    calls_per_lm = {name: int(round(total_calls * fraction)) for name, fraction in share.items() if fraction}
    cost, notes = _cost(config, calls_per_lm)
    if any(k == "embedded" for k in kinds.values()):
        notes.append("embedded models: ~0.7 s per call and ~0.75 s per training row on 2 CPU cores; repeated "
                     "calls are answered from the run's cache")
    if any(k == "litellm" for k in kinds.values()):
        notes.append("hosted LMs: ~1 s per call, divided by their parallel calls")
    return Estimate(steps, test_calls, calls_per_lm, seconds, cost, (n, v, t), notes)


def _cost(config: RunConfig, calls_per_lm: dict[str, int]) -> tuple[float | None, list[str]]:
    cost, notes = 0.0, []
    tokens_in, tokens_out = TOKENS_PER_CALL
    for name, calls in calls_per_lm.items():
        spec = config.lms[name]
        if not isinstance(spec, LiteLLMSpec):
            continue
        if spec.price_per_1m_input is None or spec.price_per_1m_output is None:
            notes.append(f"no price for LM {name!r}: set its prices per 1M tokens to see a cost")
            return None, notes
        cost += calls * (tokens_in * spec.price_per_1m_input + tokens_out * spec.price_per_1m_output) / 1e6
    if any(isinstance(config.lms[n], LiteLLMSpec) for n in calls_per_lm):
        notes.append(f"cost assumes ~{tokens_in} input and ~{tokens_out} output tokens per call")
    return cost, notes


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
