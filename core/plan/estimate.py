"""Pre-run estimate of LM calls, time and cost of a run configuration.

The call counts follow DSPy 3.4.1's budgets, counted with a scripted LM (2 predictors, no cache:
random search with 2 candidates and 2+2 demos made 148 calls at N=20, V=10 and 276 at N=40, V=20;
``tests/plan/test_estimate.py`` holds the estimate to the latter): for P predictors, N train and V validation
examples one evaluation costs P x V calls; random search evaluates its C candidates plus three
fixed seeds on the validation set and bootstraps demos on the train set; MIPROv2 runs one full
validation per trial plus its proposal and bootstrap calls; a weight step collects P x N traces
and trains. Each step ends with the evaluation of its program. Times use a per-call time by LM
kind (scripted ~0, hosted ~1 s divided by its parallel calls); an embedded call costs what it reads and what
it writes: ~0.18 s, plus ~0.57 ms per character of its inputs (data fields as long as the data's own, upstream
outputs as the embedded models write them; ``bench/prompt_length.py``) and ~13.8 ms per token of its answer
(the ChatAdapter's field markers, labels as long as the data's, other outputs and a ChainOfThought reasoning as
long as the embedded models write them; ``bench/call_time.py``): a one-label answer ~0.4 s, a ChainOfThought
analysis ~1.4 s. A program that cannot be inspected (a user's file): ~0.7 s per embedded call. Training on the CPU
costs a fixed part per weight step (loading the base weights, setting up LoRA: ~20 s) and ~0.6 s per
training row of 384 tokens, in proportion to the rows' length up to the weight step's ``max_length``, which cuts
longer rows (a step of batch size B costs B rows), the prompt prefix a step's rows share at a discount.
The length is that of the rows the run will train on: the small predictors' prompts formatted by the
ChatAdapter, with their data fields as long as the data's own (mean per column), upstream outputs and
labels as long as the embedded models write them, and, when the weight step keeps demos, the demos
the last prompt step leaves (a stratified set: one per value of the label with the most values).

Costs are known only for hosted LMs with prices. Each call is billed at the tokens of its prompt and answer as the
ChatAdapter formats them for this program and data; a prompt step's calls and every later call carry the demos it may
add (at most, until a weight step trains without them): an upper bound. Not modelled: how a hosted call's length
changes its time (no network here), prompt caching discounts, and the demos in an embedded call's prompt (the engine
keeps each predictor's evaluated prompt prefix, ``core.lms.prefix_states``: a candidate's demos are read once).

The tiny-model path is modelled too: stratified prompt steps (only the label predictors' calls cost time, the run's
call cache answering unchanged upstream predictors once), weight steps on ``gold`` rows (only the upstream predictors
run over the training set), and a stratified prompt step after a weight step without demos.
Every embedded time is that of the machine the constants were measured on, times this machine's factors
(``core.plan.calibration``: calls for a call, training for a weight step's training and export), read from their
cache, never measured here: 1.0 where this machine is not calibrated, as a note says.
``bench/quality.py`` prints this estimate's error against the measured wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from core.config.schema import EmbeddedLMSpec, FactoryLMSpec, LiteLLMSpec, LocalLMSpec, RunConfig
from core.config.strategy import join_steps
from core.data import Table
from core.errors import shown
from core.optimizers.entry import EstimateContext
from core.optimizers.finetune import EXPECTED_BUDGET_SHARE
from core.optimizers.table import get_optimizer
from core.plan import calibration
from core.programs import label_predictors

# Per call; embedded: that of a program that cannot be inspected (an inspected one's calls are priced by their text).
SECONDS_PER_CALL = {"embedded": 0.7, "scripted": 0.002, "litellm": 1.0, "factory": 1.0}
# Training on the CPU, measured on the default run (bench/default_run.py, idle, 30 November 2026): 32 steps of 4
# rows of 414 tokens cut to max_length 384, ~20 s to the first step, then 2.2-2.5 s per step; the classifier's
# ~590-token rows, cut to 384 too, trained at the same 0.60 s per row: a row costs its tokens up to max_length.
SECONDS_PER_TRAIN_ROW = {"embedded": 0.6, "scripted": 0.0025, "litellm": 0.0, "factory": 0.25}
TRAIN_FIXED_SECONDS = {"embedded": 20.0, "scripted": 0.0, "litellm": 0.0, "factory": 0.0}
TRAINED_ROW_TOKENS = 384  # the tokens per row SECONDS_PER_TRAIN_ROW was measured on (after the cut)
REFERENCE_ROW_TOKENS = 414  # a training row of a program that cannot be inspected (support triage's)
REFERENCE_SHARED_TOKENS = 246  # of which its predictor's rows all start with (the system message and field marker)
SHARED_TOKEN_COST = 0.68  # of a row's own token: the shared prefix runs once a step, again for the backward pass
# (core.lms.lora.prefix; a step of 4 of those rows: 10.2 s, whole rows 12.6 s: bench/finetune_memory.py --matrix levers)
CHARS_PER_TOKEN = 3.45  # SmolLM2's tokenizer on the training rows of the three sample tasks: 3.45-3.64
# Field lengths (characters) of a call or a training row where the data does not say: what the embedded models
# write as an upstream output (mean over the training rows of the quality runs: support triage's summaries 67, the
# document task's analyses 93), as a list output (the document task's key_findings: ``[]`` in all 220 answers of
# three default runs, base and fine-tuned models alike), a ChainOfThought reasoning (bounded at 240 by the
# grammar), a label, and a data field when no data is loaded.
UPSTREAM_OUTPUT_CHARS = 80
LIST_OUTPUT_CHARS = 2
REASONING_CHARS = 200
LABEL_CHARS = 8
DATA_FIELD_CHARS = 200
# Merging the LoRA weights, writing the GGUF and loading it, per weight step: the provider's meta.json said 5.6-7.6 s
# (export_seconds) in 15 default runs timed alone (30 November - 1 December 2026), and the rounds' "GGUF export"
# phase 7.3 s (support triage) and 8.2 s (the classifier). It was 20 s until 1 December 2026: measured side by side.
SECONDS_PER_EXPORT = {"embedded": 8.0, "scripted": 0.0, "litellm": 0.0, "factory": 0.0}
# An embedded call's time: a fixed part, what it reads and what it writes. It grows with the text it reads: llama.cpp
# evaluates the prompt before it answers, all but the prefix it kept from an earlier call of the same predictor
# (core.lms.prefix_states). bench/prompt_length.py (SmolLM2-135M, the classifier's one Predict, 2 threads, idle, 30
# November 2026; bench/results/prompt_length.json): texts of 150, 600, 1500 and 3000 characters took a median 0.41,
# 0.69, 1.19 and 2.03 s per call, 0.567 ms per character (least squares). Hosted LMs: not measured here (no
# network), so their time does not depend on the length of what they read or write.
SECONDS_PER_INPUT_CHAR = {"embedded": 0.00057, "scripted": 0.0, "litellm": 0.0, "factory": 0.0}
# It grows with the answer it writes, token by token: bench/call_time.py (every predictor of the three sample
# programs as a run serves them, 12 training examples each, 2 threads, idle, 1 December 2026;
# bench/results/call_time.json): least squares with the input slope above, seconds = 0.175 + 0.00057 x input
# characters + 0.0143 x answer tokens; four runs that day gave 0.163-0.200 s and 13.7-14.4 ms, and the estimate
# uses 0.18 s and 13.8 ms. Per predictor, a one-label answer of 16 tokens took 0.36 s, two labels (28-29 tokens)
# 0.70-0.75 s, a summary and a product area (51 tokens) 0.90 s, a ChainOfThought analysis (83 tokens) 1.47 s. The
# lengths the estimate expects the models to write are means: per predictor it was 8-34 % off.
EMBEDDED_CALL_SECONDS = 0.18
# What one call of a program that cannot be inspected is taken to read, for the estimate's note (the sample tasks'
# calls: support triage 136 characters, the classifier 93, the documents 178).
REFERENCE_INPUT_CHARS = 140
SECONDS_PER_OUTPUT_TOKEN = {"embedded": 0.0138, "scripted": 0.0, "litellm": 0.0, "factory": 0.0}
# An answer's tokens: each output field's ``[[ ## name ## ]]`` marker and the blank line after its value, and the
# closing ``[[ ## completed ## ]]`` (~8 tokens each), plus the values, ~4.5 characters per token of English (the
# sample programs' answers, counted by SmolLM2's tokenizer: one label 16 tokens, two labels 28-29, a summary and a
# product area 51, a reasoning, an analysis and an empty list 83-102).
ANSWER_MARKER_TOKENS = 8
VALUE_CHARS_PER_TOKEN = 4.5
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
    """The kind an LM's calls and training are priced as: a local model as the embedded ones (the same engine and
    call cache; its rates are SmolLM2's: a larger model is slower, as the estimate's note says)."""
    if isinstance(spec, EmbeddedLMSpec | LocalLMSpec):
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
    """The values of each class-like label field in ``table`` (``core.plan.prepare.label_choices``); none without data."""
    from core.plan.prepare import label_choices

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


def _label_predictors(config: RunConfig, program: Any) -> list[str]:
    """The label predictors of ``program`` (``core.programs.label_predictors``) for the data's label fields. A
    program that cannot be inspected without running user code: its last predictor."""
    if program is None:
        return list(config.predictors)[-1:]
    return list(label_predictors(program, config.data.labels))


def _field_chars(config: RunConfig, table: Table | None, program: Any = None) -> dict[str, float]:
    """Mean characters of each data field (inputs and labels) over ``table``'s rows, defaults without data; with
    ``program``, also each output its predictors write that is not a data field, as long as the embedded models
    write it (a reasoning, a list, other text). A field neither names: ``UPSTREAM_OUTPUT_CHARS``."""
    out = {f: float(DATA_FIELD_CHARS) for f in config.data.inputs} | {f: float(LABEL_CHARS) for f in config.data.labels}
    if table is not None and len(table):
        for name in out:
            column = config.data.mapping.get(name)
            if column in table.columns:
                out[name] = fmean(len(row.get(column, "").strip()) for row in table.rows)
    for _, predictor in program.named_predictors() if program is not None else ():
        for name, info in predictor.signature.output_fields.items():
            if name not in out:
                listed = getattr(info.annotation, "__origin__", info.annotation) in (list, tuple, set)
                out[name] = float(REASONING_CHARS if name == "reasoning" else
                                  LIST_OUTPUT_CHARS if listed else UPSTREAM_OUTPUT_CHARS)
    return out


def training_row_tokens(config: RunConfig, program: Any, table: Table | None, demos: int = 0) -> float:
    """Tokens of one training row of the small predictors (``training_row_parts``)."""
    return training_row_parts(config, program, table, demos)[0]


def training_row_parts(config: RunConfig, program: Any, table: Table | None, demos: int = 0) -> tuple[float, float]:
    """(tokens of a small predictors' training row as the weight step formats it: data fields as long as in
    ``table``, others as the embedded models write them, ``demos`` demos; the prompt prefix all its rows share)."""
    small = {name for name, a in config.predictors.items() if a.role == "small"}
    chars = _formatted_chars(config, program, table, small, demos)
    if not chars:
        return float(REFERENCE_ROW_TOKENS), float(REFERENCE_SHARED_TOKENS)
    return (chars[0] + chars[1]) / CHARS_PER_TOKEN, chars[2] / CHARS_PER_TOKEN


def _formatted_chars(config: RunConfig, program: Any, table: Table | None, names: set[str],
                     demos: int = 0) -> tuple[float, float, float] | None:
    """Characters of one call of the predictors ``names`` (their mean) as the ChatAdapter formats it: the prompt
    (system message, ``demos`` demos, the inputs), the answer, and the part of the prompt every call of a predictor
    repeats (the messages before the inputs'). Data fields as long as in ``table``, other fields
    as the embedded models write them. None for a program that cannot be inspected or no such predictor."""
    if program is None:
        return None
    import dspy

    chars = _field_chars(config, table, program)
    adapter = dspy.ChatAdapter()
    prompts, answers, shared = [], [], []
    for name, predictor in program.named_predictors():
        if name not in names:
            continue
        signature = predictor.signature
        inputs = {f: "x" * round(chars.get(f, UPSTREAM_OUTPUT_CHARS)) for f in signature.input_fields}
        outputs = {f: "x" * round(chars.get(f, UPSTREAM_OUTPUT_CHARS))
                   for f in signature.output_fields}
        messages = adapter.format_finetune_data(signature, [{**inputs, **outputs}] * demos, inputs, outputs)["messages"]
        prompts.append(sum(len(m["content"]) for m in messages[:-1]))
        answers.append(len(messages[-1]["content"]))
        shared.append(sum(len(m["content"]) for m in messages[:-2]))
    return (fmean(prompts), fmean(answers), fmean(shared)) if prompts else None


def call_input_chars(config: RunConfig, program: Any, table: Table | None, names: set[str]) -> float:
    """Characters of the inputs of one call of the predictors ``names`` (their mean): data fields as long as in
    ``table``, upstream outputs as the embedded models write them. ``REFERENCE_INPUT_CHARS`` for a program that
    cannot be inspected."""
    if program is None:
        return float(REFERENCE_INPUT_CHARS)
    chars = _field_chars(config, table, program)
    sizes = [sum(chars.get(f, UPSTREAM_OUTPUT_CHARS) for f in predictor.signature.input_fields)
             for name, predictor in program.named_predictors() if name in names]
    return fmean(sizes) if sizes else float(REFERENCE_INPUT_CHARS)


def answer_tokens(config: RunConfig, program: Any, table: Table | None, name: str) -> float:
    """Tokens of the answer of one call of predictor ``name`` on the embedded models: the field markers and the
    values (labels as long as in ``table``, a reasoning and other outputs as long as the embedded models write
    them)."""
    chars = _field_chars(config, table, program)
    predictor = dict(program.named_predictors())[name]
    values = [chars.get(f, UPSTREAM_OUTPUT_CHARS) for f in predictor.signature.output_fields]
    return ANSWER_MARKER_TOKENS * (len(values) + 1) + sum(values) / VALUE_CHARS_PER_TOKEN


def embedded_call_seconds(config: RunConfig, program: Any, table: Table | None, name: str) -> float:
    """Seconds of one call of predictor ``name`` on the embedded models: the fixed part, its inputs' characters and
    its answer's tokens. ``SECONDS_PER_CALL`` for a program that cannot be inspected. Times this machine's factor."""
    speed = calibration.current().calls
    if program is None:
        return SECONDS_PER_CALL["embedded"] * speed
    reads = SECONDS_PER_INPUT_CHAR["embedded"] * call_input_chars(config, program, table, {name})
    writes = SECONDS_PER_OUTPUT_TOKEN["embedded"] * answer_tokens(config, program, table, name)
    return speed * (EMBEDDED_CALL_SECONDS + reads + writes)


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
    label_names = _label_predictors(config, program)
    labelled = min(len(label_names), p)
    small_labelled = sum(1 for name in label_names if getattr(config.predictors.get(name), "role", None) == "small")
    small = sum(1 for a in config.predictors.values() if a.role == "small")
    upstream = p - labelled
    share = {name: sum(1 for a in config.predictors.values() if a.lm == name) / p for name in config.lms}
    kinds = {name: lm_kind(spec) for name, spec in config.lms.items()}
    served_by = {lm: {n for n, a in config.predictors.items() if a.lm == lm} for lm in config.lms}
    input_chars = {lm: call_input_chars(config, program, table, names) for lm, names in served_by.items()}
    # an embedded LM's call: the mean over the predictors it serves of what each reads and writes
    embedded_call = {lm: fmean(embedded_call_seconds(config, program, table, n) for n in names)
                     for lm, names in served_by.items() if kinds[lm] == "embedded" and names}

    def seconds_for(calls: int) -> float:
        total = 0.0
        for name, fraction in share.items():
            spec = config.lms[name]
            parallel = spec.num_threads if isinstance(spec, LiteLLMSpec) else 1
            per_call = embedded_call.get(name, SECONDS_PER_CALL[kinds[name]])
            if kinds[name] == "scripted":
                per_call += float(spec.options.get("delay", 0.0))
            total += calls * fraction * per_call / parallel
        return total

    small_kind = next((kinds[a.lm] for a in config.predictors.values() if a.role == "small"), "embedded")
    speed = calibration.current()  # this machine's factors (calls: embedded_call_seconds)
    train_speed = speed.training if small_kind == "embedded" else 1.0
    cache = any(k == "embedded" for k in kinds.values())  # the embedded engine answers repeated calls once
    steps = [StepEstimate("baseline", "evaluation", p * v, seconds_for(p * v))]
    billed: list[tuple[int, int]] = [(p * v, 0)]  # (calls that reach the LMs, demos their prompts carry at most)
    done: list[str] = []
    prompted = False
    served = 0  # label predictors fine-tuned without demos: later stratified prompt steps leave them as trained
    served_upstream = 0  # upstream predictors fine-tuned without demos: the same
    demos = 0  # demos per predictor after the last prompt step (at most)
    row_tokens: dict[int, tuple[float, float]] = {}  # demos kept in the rows -> tokens per row, shared ones
    for spec in config.steps():
        done.append(spec.key)
        row = get_optimizer(spec.type)
        context = EstimateContext(predictors=p, train=n, val=v, labelled=labelled, cached=cache, prompted=prompted,
                                  export_seconds=SECONDS_PER_EXPORT[small_kind] * train_speed, served=served,
                                  small=small, small_upstream=small - small_labelled, served_upstream=served_upstream)
        cost = row.estimate(spec.settings, context)
        seconds = seconds_for(cost.calls - cost.cached) + cost.extra_seconds
        if cost.train_rows:
            kept = 0 if getattr(spec.settings, "exclude_demos", False) else demos
            if kept not in row_tokens:
                row_tokens[kept] = training_row_parts(config, program, table, kept)
            whole, shared = row_tokens[kept]
            trained = min(whole, getattr(spec.settings, "max_length", None) or whole)
            if getattr(spec.settings, "share_prefix", False) and trained == whole:  # a cut row shares no prefix
                trained -= (1 - SHARED_TOKEN_COST) * shared
            seconds += train_speed * (TRAIN_FIXED_SECONDS[small_kind]
                                      + cost.train_rows * SECONDS_PER_TRAIN_ROW[small_kind] * trained / TRAINED_ROW_TOKENS)
        if spec.kind == "prompt":
            prompted = True
            billed.append((cost.calls - cost.cached, max(demos, _demos_after(spec.settings, choices))))
            demos = _demos_after(spec.settings, choices)
        else:
            billed.append((cost.calls - cost.cached, demos))
        if spec.kind == "weight" and getattr(spec.settings, "exclude_demos", False):
            served, demos = small_labelled, 0  # the fine-tuned predictors are served without demos
            served_upstream = small - small_labelled
        steps.append(StepEstimate(join_steps(done), spec.type, cost.calls, seconds, cost.train_steps, cost.cached))
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
        trained = ", ".join(f"~{w:.0f} tokens, ~{n:.0f} of them a shared prefix" for w, n in row_tokens.values())
        read = [f"~{input_chars[lm]:.0f} input characters, ~{embedded_call[lm]:.2f} s each" for lm in embedded_call]
        notes.append(f"embedded models: ~{EMBEDDED_CALL_SECONDS} s per call, plus "
                     f"~{SECONDS_PER_INPUT_CHAR['embedded'] * 1000:.2f} s per 1000 input characters and "
                     f"~{SECONDS_PER_OUTPUT_TOKEN['embedded'] * 1000:.1f} ms per answer token (this run's calls: "
                     f"{'; '.join(read) or 'none'}), and ~{SECONDS_PER_TRAIN_ROW['embedded']} s per training row "
                     f"of ~{TRAINED_ROW_TOKENS} tokens on 2 CPU cores (a row is cut to max_length; a shared prefix token "
                     f"costs {SHARED_TOKEN_COST:.2f} of a row's own)"
                     + (f" (this run's rows: {trained})" if trained else "")
                     + "; repeated calls are answered from the run's cache; a weight step stops when its "
                     f"validation rows stop improving: priced at {EXPECTED_BUDGET_SHARE:.0%} of its epochs")
        notes.append(calibration.estimate_note(speed))
    if any(isinstance(spec, LocalLMSpec) for spec in config.lms.values()):
        notes.append("local models are priced at the embedded SmolLM2 135M's rates: a larger model takes longer, "
                     "and its first use converts it to GGUF once (SmolLM2's folder: ~10 s)")
    if any(k == "litellm" for k in kinds.values()):
        notes.append("hosted LMs: ~1 s per call, divided by their parallel calls")
    return Estimate(steps, test_calls, calls_per_lm, seconds, cost, (n, v, t), notes)


def estimate_from_source(config: RunConfig) -> Estimate:
    """``estimate`` with the configuration's data read from its source, as the Strategy page shows it once
    the data is loaded; without the data when it cannot be read (the error is the run's to report)."""
    from core.data import load_table_from_path
    from core.errors import StudioError
    from core.plan.prepare import data_source_path

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
            notes.append(f"no price for LM {shown(name)}: set its prices per 1M tokens to see a cost")
            return None, notes
        for calls, demos in billed:
            tokens_in, tokens_out = tokens(name, demos)
            cost += calls * share[name] * (tokens_in * spec.price_per_1m_input + tokens_out * spec.price_per_1m_output) / 1e6
    most = max(demos for _, demos in billed)
    for name in hosted:
        (plain_in, out), (most_in, _) = tokens(name, 0), tokens(name, most)
        notes.append(f"LM {shown(name)}: each call's prompt as this program formats it with this data, ~{plain_in:.0f} input "
                     f"tokens" + (f" (up to ~{most_in:.0f} with the {most} demos a prompt step may add)" if most else "")
                     + f" and ~{out:.0f} output tokens")
    return cost, notes


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
