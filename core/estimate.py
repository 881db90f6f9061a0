"""Pre-run estimate of LM calls, time and cost of a run configuration.

The call counts follow the budgets measured with a scripted engine on DSPy 3.4.1
(shared/notes/dspy-3.4.1.md, "LM call budgets"): for P predictors, N train and V validation
examples one evaluation costs P x V calls; random search evaluates its C candidates plus three
fixed seeds on the validation set and bootstraps demos on the train set; MIPROv2 runs one full
validation per trial plus its proposal and bootstrap calls; a weight step collects P x N traces
and trains. Each step ends with the evaluation of its program. Times use a per-call time by LM
kind (embedded ~0.7 s, scripted ~0, hosted ~1 s divided by its parallel calls). An embedded call also
takes ~0.57 ms per character its inputs (data fields as long as the data's own, upstream outputs as the
embedded models write them) have beyond the sample tasks' ~140 (``bench/prompt_length.py``). Training on the CPU
costs a fixed part per weight step (loading the base weights, setting up LoRA: ~20 s) and ~0.6 s per
training row of 414 tokens, in proportion to the rows' length (a step of batch size B costs B rows).
The length is that of the rows the run will train on: the small predictors' prompts formatted by the
ChatAdapter, with their data fields as long as the data's own (mean per column), upstream outputs and
labels as long as the embedded models write them, and, when the weight step keeps demos, the demos
the last prompt step leaves (a stratified set: one per value of the label with the most values).
A ChainOfThought predictor's calls cost ``COT_CALL_FACTOR`` times a Predict call on the embedded models
(the estimate uses the program's mean per call).

Costs are known only for hosted LMs with prices. Each call is billed at the tokens of its prompt and answer
as the ChatAdapter formats them for this program and data (a ChainOfThought answer holds its reasoning); a
prompt step's calls and every later call carry the demos it may add (at most; until a weight step trains
without them), so the cost is an upper bound where prompt steps keep fewer. Not modelled: how the length of a
hosted call's prompt or answer changes its time (not measured here: no network), prompt caching discounts, and
the demos in an embedded call's prompt (the engine keeps the evaluated prefix of each predictor's prompt,
``core.lms.prefix_states``, so a candidate's demos are read once, not per call).

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
from statistics import fmean
from typing import Any

from core.config import EmbeddedLMSpec, FactoryLMSpec, LiteLLMSpec, RunConfig
from core.data import Table
from core.optimizers.entry import EstimateContext
from core.optimizers.table import get_optimizer

SECONDS_PER_CALL = {"embedded": 0.7, "scripted": 0.002, "litellm": 1.0, "factory": 1.0}
# A ChainOfThought call on the embedded models against a Predict call: it writes a reasoning first. Measured in
# the gold trace collection of the default runs (idle, 30 November 2026): 30 `analyze` calls (ChainOfThought) in
# 37.1 s, 30 `extract` calls (Predict) in 22.1 s.
COT_CALL_FACTOR = 1.7
# Training on the CPU, measured on the default run (bench/default_run.py, idle, 30 November 2026): 32 steps of 4
# rows of 414 tokens (tokenized by the model), ~20 s from the start of training to its first step, then
# 2.2-2.5 s per step; the training phase took 97.5-100.9 s. Time per row grows with the row's tokens.
SECONDS_PER_TRAIN_ROW = {"embedded": 0.6, "scripted": 0.0025, "litellm": 0.0, "factory": 0.25}
TRAIN_FIXED_SECONDS = {"embedded": 20.0, "scripted": 0.0, "litellm": 0.0, "factory": 0.0}
REFERENCE_ROW_TOKENS = 414  # the rows SECONDS_PER_TRAIN_ROW was measured on
CHARS_PER_TOKEN = 3.45  # SmolLM2's tokenizer on the training rows of the three sample tasks: 3.45-3.64
# Field lengths (characters) of a training row where the data does not say: what the embedded models write as an
# upstream output (mean over the training rows of the quality runs: support triage's summaries 67, the document
# task's analyses 93), a ChainOfThought reasoning (bounded at 240 by the grammar), a label, and a data field
# when no data is loaded.
UPSTREAM_OUTPUT_CHARS = 80
REASONING_CHARS = 200
LABEL_CHARS = 8
DATA_FIELD_CHARS = 200
SECONDS_PER_EXPORT = {"embedded": 20.0, "scripted": 0.0, "litellm": 0.0, "factory": 0.0}  # merge + GGUF + load
# An embedded call's time grows with the text it reads: llama.cpp evaluates the prompt before it answers, all but
# the prefix it kept from an earlier call of the same predictor (core.lms.prefix_states). bench/prompt_length.py (SmolLM2-135M, the
# classifier's one Predict, 2 threads, idle, 30 November 2026; bench/results/prompt_length.json): texts of 150, 600,
# 1500 and 3000 characters took a median 0.41, 0.69, 1.19 and 2.03 s per call, 0.567 ms per character (least
# squares). Hosted LMs: not measured here (no network), so their time does not depend on the inputs' length.
SECONDS_PER_INPUT_CHAR = {"embedded": 0.00057, "scripted": 0.0, "litellm": 0.0, "factory": 0.0}
# The inputs of one call (data fields and upstream outputs, mean over the predictors) in the sample tasks' default
# runs, on which SECONDS_PER_CALL was measured: support triage 136 characters, the classifier 93, the documents 178.
REFERENCE_INPUT_CHARS = 140
MIN_SECONDS_PER_EMBEDDED_CALL = 0.3
HOSTED_CHARS_PER_TOKEN = 4.0  # the hosted models' tokenizers on English text, for costs
TOKENS_PER_CALL = (400, 80)  # input/output tokens of one call of a program that cannot be inspected (a user file)
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


def data_label_choices(config: RunConfig, table: Table | None) -> dict[str, list[str]]:
    """The values of each class-like label field in ``table`` (``core.prepare.label_choices``); none without data."""
    from core.prepare import label_choices

    return label_choices(table, config) if table is not None else {}


def inspected_program(config: RunConfig, choices: dict[str, list[str]]) -> Any:
    """The program as the run builds it, its label fields constrained to ``choices`` (the data's values);
    None for a program from a user file, which is not run to be inspected."""
    if config.program.kind == "user_file":
        return None
    from core.programs import apply_label_choices, build_program

    program = build_program(config.program)
    apply_label_choices(program, choices)
    return program


def _program_facts(config: RunConfig, program: Any) -> tuple[list[str], float]:
    """The label predictors, and the mean time of one call of the program's predictors relative to a
    ``Predict`` call on an embedded model (a ChainOfThought predictor's calls cost ``COT_CALL_FACTOR``).
    A program that cannot be inspected without running user code: its last predictor, factor 1."""
    labels = set(config.data.labels)
    if program is None:
        return list(config.predictors)[-1:], 1.0
    out, weights = [], []
    for name, predictor in program.named_predictors():
        fields = list(predictor.signature.output_fields)
        outputs = [n for n in fields if n != "reasoning"]
        if outputs and all(n in labels for n in outputs):
            out.append(name)
        weights.append(COT_CALL_FACTOR if "reasoning" in fields else 1.0)
    return out, (sum(weights) / len(weights) if weights else 1.0)


def _field_chars(config: RunConfig, table: Table | None) -> dict[str, float]:
    """Mean characters of each data field (inputs and labels) over ``table``'s rows; defaults without data."""
    out = {f: float(DATA_FIELD_CHARS) for f in config.data.inputs} | {f: float(LABEL_CHARS) for f in config.data.labels}
    if table is not None and len(table):
        for name in out:
            column = config.data.mapping.get(name)
            if column in table.columns:
                out[name] = fmean(len(row.get(column, "").strip()) for row in table.rows)
    return out


def training_row_tokens(config: RunConfig, program: Any, table: Table | None, demos: int = 0) -> float:
    """Tokens of one training row of the small predictors (their mean), formatted by the ChatAdapter as the
    weight step formats them: data fields as long as in ``table``, other fields as the embedded models write
    them, ``demos`` demos of the same size. ``REFERENCE_ROW_TOKENS`` for a program that cannot be inspected."""
    small = {name for name, a in config.predictors.items() if a.role == "small"}
    chars = _formatted_chars(config, program, table, small, demos)
    return (chars[0] + chars[1]) / CHARS_PER_TOKEN if chars else float(REFERENCE_ROW_TOKENS)


def _formatted_chars(config: RunConfig, program: Any, table: Table | None, names: set[str],
                     demos: int = 0) -> tuple[float, float] | None:
    """Characters of one call of the predictors ``names`` (their mean) as the ChatAdapter formats it: the prompt
    (system message, ``demos`` demos, the inputs) and the answer. Data fields as long as in ``table``, other fields
    as the embedded models write them. None for a program that cannot be inspected or no such predictor."""
    if program is None:
        return None
    import dspy

    chars = _field_chars(config, table)
    adapter = dspy.ChatAdapter()
    prompts, answers = [], []
    for name, predictor in program.named_predictors():
        if name not in names:
            continue
        signature = predictor.signature
        inputs = {f: "x" * round(chars.get(f, UPSTREAM_OUTPUT_CHARS)) for f in signature.input_fields}
        outputs = {f: "x" * round(chars.get(f, REASONING_CHARS if f == "reasoning" else UPSTREAM_OUTPUT_CHARS))
                   for f in signature.output_fields}
        messages = adapter.format_finetune_data(signature, [{**inputs, **outputs}] * demos, inputs, outputs)["messages"]
        prompts.append(sum(len(m["content"]) for m in messages[:-1]))
        answers.append(len(messages[-1]["content"]))
    return (fmean(prompts), fmean(answers)) if prompts else None


def call_input_chars(config: RunConfig, program: Any, table: Table | None, names: set[str]) -> float:
    """Characters of the inputs of one call of the predictors ``names`` (their mean): data fields as long as in
    ``table``, upstream outputs as the embedded models write them. ``REFERENCE_INPUT_CHARS`` for a program that
    cannot be inspected."""
    if program is None:
        return float(REFERENCE_INPUT_CHARS)
    chars = _field_chars(config, table)
    sizes = [sum(chars.get(f, UPSTREAM_OUTPUT_CHARS) for f in predictor.signature.input_fields)
             for name, predictor in program.named_predictors() if name in names]
    return fmean(sizes) if sizes else float(REFERENCE_INPUT_CHARS)


def call_tokens(config: RunConfig, program: Any, table: Table | None, names: set[str], demos: int) -> tuple[float, float]:
    """Input and output tokens of one call of the predictors ``names`` on a hosted LM, with ``demos`` demos:
    the ChatAdapter's prompt and answer (``_formatted_chars``); ``TOKENS_PER_CALL`` when it cannot be formatted."""
    chars = _formatted_chars(config, program, table, names, demos)
    if chars is None:
        return TOKENS_PER_CALL
    return chars[0] / HOSTED_CHARS_PER_TOKEN, chars[1] / HOSTED_CHARS_PER_TOKEN


def _demos_after(settings: Any, choices: dict[str, list[str]]) -> int:
    """Demos per predictor a prompt step leaves (at most): a stratified set shows each value of the label field
    with the most values (known from the data), otherwise the bootstrapped and labeled demos its settings allow."""
    allowed = getattr(settings, "max_bootstrapped_demos", 0) + getattr(settings, "max_labeled_demos", 0)
    if getattr(settings, "stratify", False) and choices:
        return max(len(values) for values in choices.values())
    return allowed


def estimate(config: RunConfig, n_rows: int | None = None, table: Table | None = None) -> Estimate:
    """Estimate calls, time and cost of running ``config``. ``n_rows``: the dataset's size, for ratio splits;
    ``table``: the loaded dataset, which gives its size and the length of the rows the weight steps train on."""
    if table is not None:
        n_rows = len(table)
    n, v, t = split_sizes(config, n_rows)
    p = len(config.predictors)
    choices = data_label_choices(config, table)
    program = inspected_program(config, choices)
    label_names, call_factor = _program_facts(config, program)
    labelled = min(len(label_names), p)
    small_labelled = sum(1 for name in label_names if getattr(config.predictors.get(name), "role", None) == "small")
    small = sum(1 for a in config.predictors.values() if a.role == "small")
    upstream = p - labelled
    share = {name: sum(1 for a in config.predictors.values() if a.lm == name) / p for name in config.lms}
    kinds = {name: lm_kind(spec) for name, spec in config.lms.items()}
    served_by = {lm: {n for n, a in config.predictors.items() if a.lm == lm} for lm in config.lms}
    input_chars = {lm: call_input_chars(config, program, table, names) for lm, names in served_by.items()}

    def seconds_for(calls: int) -> float:
        total = 0.0
        for name, fraction in share.items():
            spec = config.lms[name]
            parallel = spec.num_threads if isinstance(spec, LiteLLMSpec) else 1
            per_call = SECONDS_PER_CALL[kinds[name]] * (call_factor if kinds[name] == "embedded" else 1.0)
            if kinds[name] == "embedded":  # longer inputs take longer to read
                per_call = max(MIN_SECONDS_PER_EMBEDDED_CALL, per_call + SECONDS_PER_INPUT_CHAR["embedded"] * (
                    input_chars[name] - REFERENCE_INPUT_CHARS))
            if kinds[name] == "scripted":
                per_call += float(spec.options.get("delay", 0.0))
            total += calls * fraction * per_call / parallel
        return total

    small_kind = next((kinds[a.lm] for a in config.predictors.values() if a.role == "small"), "embedded")
    cache = any(k == "embedded" for k in kinds.values())  # the embedded engine answers repeated calls once
    steps = [StepEstimate("baseline", "evaluation", p * v, seconds_for(p * v))]
    billed: list[tuple[int, int]] = [(p * v, 0)]  # (calls that reach the LMs, demos their prompts carry at most)
    done: list[str] = []
    prompted = False
    served = 0  # label predictors fine-tuned without demos: later stratified prompt steps leave them as trained
    served_upstream = 0  # upstream predictors fine-tuned without demos: the same
    demos = 0  # demos per predictor after the last prompt step (at most)
    row_tokens: dict[int, float] = {}  # demos kept in the rows -> tokens per row
    for key in config.step_keys():
        done.append(key)
        spec = config.optimizers[key]
        row = get_optimizer(spec.type)
        context = EstimateContext(predictors=p, train=n, val=v, labelled=labelled, cached=cache, prompted=prompted,
                                  export_seconds=SECONDS_PER_EXPORT[small_kind], served=served, small=small,
                                  small_upstream=small - small_labelled, served_upstream=served_upstream)
        cost = row.estimate(spec.settings, context)
        seconds = seconds_for(cost.calls - cost.cached) + cost.extra_seconds
        if cost.train_rows:
            kept = 0 if getattr(spec.settings, "exclude_demos", False) else demos
            if kept not in row_tokens:
                row_tokens[kept] = training_row_tokens(config, program, table, kept)
            seconds += TRAIN_FIXED_SECONDS[small_kind] + (
                cost.train_rows * SECONDS_PER_TRAIN_ROW[small_kind] * row_tokens[kept] / REFERENCE_ROW_TOKENS)
        if row.kind == "prompt":
            prompted = True
            billed.append((cost.calls - cost.cached, max(demos, _demos_after(spec.settings, choices))))
            demos = _demos_after(spec.settings, choices)
        else:
            billed.append((cost.calls - cost.cached, demos))
        if row.kind == "weight" and getattr(spec.settings, "exclude_demos", False):
            served, demos = small_labelled, 0  # the fine-tuned predictors are served without demos
            served_upstream = small - small_labelled
        steps.append(StepEstimate(" -> ".join(done), spec.type, cost.calls, seconds, cost.train_steps, cost.cached))
    test_calls = 2 * p * t
    test_cached = upstream * t if cache else 0
    total_calls = sum(s.calls for s in steps) + test_calls
    seconds = sum(s.seconds for s in steps) + seconds_for(test_calls - test_cached)
    calls_per_lm = {name: int(round(total_calls * fraction)) for name, fraction in share.items() if fraction}
    billed.append((test_calls - test_cached, demos))
    formatted: dict[tuple[str, int], tuple[float, float]] = {}  # (LM, demos) -> tokens: each prompt formatted once

    def tokens(lm: str, demos: int) -> tuple[float, float]:
        if (lm, demos) not in formatted:
            formatted[lm, demos] = call_tokens(config, program, table, served_by[lm], demos)
        return formatted[lm, demos]

    cost, notes = _cost(config, billed, share, tokens)
    if any(k == "embedded" for k in kinds.values()):
        trained = ", ".join(f"~{tokens:.0f} tokens" for tokens in row_tokens.values())
        read = [f"~{input_chars[lm]:.0f}" for lm, kind in kinds.items() if kind == "embedded" and served_by[lm]]
        notes.append(f"embedded models: ~{SECONDS_PER_CALL['embedded']} s per call of ~{REFERENCE_INPUT_CHARS} input "
                     f"characters, ~{SECONDS_PER_INPUT_CHAR['embedded'] * 1000:.2f} s more per 1000 (this run's "
                     f"calls read {', '.join(read) or 'none'}), and ~0.6 s per training row of ~400 tokens on 2 CPU cores"
                     + (f" (this run's rows: {trained})" if trained else "")
                     + "; repeated calls are answered from the run's cache")
    if any(k == "litellm" for k in kinds.values()):
        notes.append("hosted LMs: ~1 s per call, divided by their parallel calls")
    return Estimate(steps, test_calls, calls_per_lm, seconds, cost, (n, v, t), notes)


def estimate_from_source(config: RunConfig) -> Estimate:
    """``estimate`` with the configuration's data read from its source, as the Strategy page shows it once
    the data is loaded; without the data when it cannot be read (the error is the run's to report)."""
    from core.data import load_table_from_path
    from core.errors import StudioError
    from core.prepare import data_source_path

    try:
        table = load_table_from_path(data_source_path(config))
    except (StudioError, OSError):
        table = None
    return estimate(config, table=table)


def _cost(config: RunConfig, billed: list[tuple[int, int]], share: dict[str, float],
          tokens: Any) -> tuple[float | None, list[str]]:
    """Cost of the hosted LMs' calls: ``billed`` lists (calls, demos) per round and for the test; an LM gets its
    ``share`` of them, each of ``tokens(lm, demos)`` input and output tokens. None when an LM has no prices."""
    cost, notes = 0.0, []
    hosted = [n for n, spec in config.lms.items() if isinstance(spec, LiteLLMSpec) and share.get(n)]
    for name in hosted:
        spec = config.lms[name]
        if spec.price_per_1m_input is None or spec.price_per_1m_output is None:
            notes.append(f"no price for LM {name!r}: set its prices per 1M tokens to see a cost")
            return None, notes
        for calls, demos in billed:
            tokens_in, tokens_out = tokens(name, demos)
            cost += calls * share[name] * (tokens_in * spec.price_per_1m_input + tokens_out * spec.price_per_1m_output) / 1e6
    most = max(demos for _, demos in billed)
    for name in hosted:
        (plain_in, out), (most_in, _) = tokens(name, 0), tokens(name, most)
        notes.append(f"LM {name!r}: each call's prompt as this program formats it with this data, ~{plain_in:.0f} input "
                     f"tokens" + (f" (up to ~{most_in:.0f} with the {most} demos a prompt step may add)" if most else "")
                     + f" and ~{out:.0f} output tokens")
    return cost, notes


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
