"""Pre-run estimates: calls follow the measured DSPy 3.4.1 budgets; time by LM kind; cost when priced."""

from __future__ import annotations

import copy

import pytest

from core.config.defaults import default_config_dict, scripted_config_dict
from core.config.schema import parse_config
from core.data import Table, load_table_from_path
from core.plan.estimate import (
    CHARS_PER_TOKEN,
    HOSTED_CHARS_PER_TOKEN,
    SECONDS_PER_INPUT_CHAR,
    SECONDS_PER_TRAIN_ROW,
    SHARED_TOKEN_COST,
    TRAINED_ROW_TOKENS,
    call_tokens,
    data_label_choices,
    estimate,
    estimate_from_source,
    format_duration,
    inspected_program,
    split_sizes,
    training_row_parts,
    training_row_tokens,
)
from core.plan.prepare import data_source_path


def _tutorial_roles(doc: dict) -> dict:
    """The tutorial's roles for analyze -> classify: analyze large (prompted), classify small."""
    doc["predictors"]["analyze.predict"] = {"lm": "large", "role": "large"}
    return doc


def _config(doc_changes: dict | None = None, *, scripted: bool = False):
    """The two-predictor tutorial pipeline (the tutorial's roles) with N=40 train, V=20 validation, 40 test
    examples."""
    doc = scripted_config_dict("analyze_classify") if scripted else _tutorial_roles(default_config_dict("analyze_classify"))
    doc["data"]["split"] = {"train": 40, "val": 20, "test": 40, "seed": 0}
    doc["optimizers"] = {"p": {"type": "random_search", "settings": {"stratify": False}},  # DSPy's search
                         "w": {"type": "finetune", "settings": {"epochs": 2, "batch_size": 8, "trace_source": "self"}}}
    doc.update(doc_changes or {})
    return parse_config(doc)


def test_stratified_search_and_gold_rows_cost_only_the_label_predictors_calls():
    """analyze -> classify with the tutorial's roles (analyze large, classify small): classify's outputs are
    the labels. With the run's call cache, a stratified candidate costs classify's V calls; gold rows run
    only analyze over the train set. With both small (the template's default), the hinted run calls both
    over the train set, and both give rows."""
    doc = _tutorial_roles(default_config_dict("analyze_classify"))
    doc["data"]["split"] = {"train": 40, "val": 20, "test": 40, "seed": 0}
    doc["strategy"] = "p -> w -> p"
    doc["optimizers"] = {"p": {"type": "random_search", "settings": {"num_candidate_programs": 2}},
                         "w": {"type": "finetune", "settings": {"epochs": 2, "batch_size": 8}}}
    baseline, p1, w, p2 = estimate(parse_config(doc)).steps
    assert p1.calls == 3 * 2 * 20 + 2 * 4 * 1 + 2 * 20  # current + 2 sets (P x V each), demo traces, evaluation
    assert p1.calls - p1.cached == 2 * 20 + 2 * 4  # only the 2 sets' classify calls and the demo traces run
    assert w.calls == 40 + 2 * 20 and w.cached == 20  # analyze over N, then the evaluation (analyze cached)
    assert p2.calls - p2.cached == 3 * 20 + 2 * 4  # after a prompt step: also the candidate without demos
    assert w.train_steps == 2 * 5  # every training row trains (the validation set's rows choose the budget)
    doc["predictors"]["analyze.predict"] = {"lm": "small", "role": "small"}
    doc["optimizers"]["w"]["settings"]["exclude_demos"] = True
    _, _, hinted, last = estimate(parse_config(doc)).steps
    assert hinted.calls == 2 * 40 + 2 * 20  # the hinted run: analyze and classify over N; the evaluation
    assert hinted.train_steps == 2 * 10  # up to 80 rows (a hinted analyze row and a gold classify row each)
    # every predictor fine-tuned without demos: the last prompt step has nothing to search (a cached evaluation)
    assert last.calls == last.cached == 2 * 20 and last.seconds == 0


def test_calls_match_measured_budgets_for_two_predictors():
    config = _config({"strategy": "p", "optimizers": {"p": {"type": "random_search"}, "w": {"type": "finetune"}},
                      "data": {**default_config_dict()["data"], "split": {"train": 40, "val": 20, "test": 40}}})
    result = estimate(config)
    baseline, step = result.steps
    assert baseline.calls == 2 * 20  # one round evaluation: P x V
    assert 276 <= step.calls - 40 <= 276 * 1.15  # measured: 276 for random search at N=40, V=20
    assert result.test_calls == 2 * 2 * 40


def test_weight_step_counts_traces_and_training_steps():
    config = _config({"strategy": "w"})
    (_, weight) = estimate(config).steps
    assert weight.calls == 2 * 40 + 2 * 20  # traces P x N, then the evaluation P x V
    assert weight.train_steps == 2 * 5  # at most 2 epochs of ceil(40 / 8) batches
    # the fixed part of training, then ~0.6 s per row of 414 tokens, 8 rows per step, for the 75 % of the bound a
    # budget chosen on validation rows trains, and the 20 validation rows scored at 3 checkpoints (before
    # training, after each epoch of those) at a third of a training row's time each
    assert weight.seconds >= 20 + (10 * 8 * 0.75 + 3 * 20 / 3) * 0.6 * 250 / 414


def test_an_embedded_call_costs_what_it_reads_and_writes_and_scripted_is_fast():
    """The tutorial pipeline without data: analyze (ChainOfThought) reads a 200-character document and writes a
    reasoning (200 characters), an analysis (80) and a list (2: SmolLM2 writes []); classify reads those two
    outputs (82) and writes two labels (8 characters each). A call costs 0.18 s + 0.57 ms per input character +
    13.8 ms per answer token, an answer being ~8 tokens per field marker (one per field and the closing one) and
    its values at 4.5 characters per token; the large and the small LM serve one predictor each."""
    embedded = estimate(_config({"strategy": "p"}))
    scripted = estimate(_config({"strategy": "p"}, scripted=True))
    assert embedded.calls == scripted.calls
    analyze = 0.18 + 0.00057 * 200 + 0.0138 * (8 * 4 + (200 + 80 + 2) / 4.5)
    classify = 0.18 + 0.00057 * 82 + 0.0138 * (8 * 3 + (8 + 8) / 4.5)
    # the best program's test calls of the unchanged upstream predictor (40) come from the run's cache
    assert embedded.seconds == pytest.approx((embedded.calls - 40) * (analyze + classify) / 2, rel=0.01)
    assert any("~0.18 s per call" in n and "13.8 ms per answer token" in n for n in embedded.notes)
    assert scripted.seconds < 5
    assert embedded.cost == 0.0


def _hosted(doc: dict, **prices) -> dict:
    hosted = {"kind": "litellm", "model": "openai/gpt-4o-mini", "price_per_1m_input": 0.15, "price_per_1m_output": 0.6}
    doc["lms"] = {"large": {**hosted, **prices}, "small": {**hosted, **prices}}
    return doc


def test_cost_with_prices_and_unknown_without():
    """Hosted LMs only (no cache): every round's calls are billed at the tokens of the prompts the program formats
    from the data; the prompt step's calls carry the demos it may add (a stratified set: one per label value)."""
    doc = _hosted(default_config_dict())
    doc["strategy"] = "p"
    config = parse_config(doc)
    table = load_table_from_path(data_source_path(config))
    priced = estimate(config, table=table)
    baseline, step = priced.steps
    program, names = _inspected(config, table), set(config.predictors)
    demos = max(len(v) for v in data_label_choices(config, table).values())

    def billed(calls: int, k: int) -> float:
        tokens_in, tokens_out = call_tokens(config, program, table, names, k)
        return calls * (tokens_in * 0.15 + tokens_out * 0.6) / 1e6

    assert priced.cost == pytest.approx(  # calls the step answers from what it already evaluated are not billed
        billed(baseline.calls, 0) + billed(step.calls - step.cached + priced.test_calls, demos))
    # a call's tokens are its formatted prompt: a real ticket's prompt as the ChatAdapter writes it
    import dspy

    row, extract = table.rows[0], dict(program.named_predictors())["extract"]
    inputs = {f: row[config.data.mapping[f]] for f in extract.signature.input_fields}
    written = dspy.ChatAdapter().format(extract.signature, [], inputs)
    real = sum(len(m["content"]) for m in written) / HOSTED_CHARS_PER_TOKEN
    assert abs(call_tokens(config, program, table, {"extract"}, 0)[0] - real) / real < 0.2
    assert call_tokens(config, program, table, names, demos)[0] > 2 * call_tokens(config, program, table, names, 0)[0]
    assert any("input tokens" in note and f"{demos} demos" in note for note in priced.notes)
    del doc["lms"]["large"]["price_per_1m_output"]
    unpriced = estimate(parse_config(doc))
    assert unpriced.cost is None and any("no price" in n for n in unpriced.notes)


def test_ratio_split_uses_dataset_size():
    doc = default_config_dict()
    doc["data"]["split"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    assert split_sizes(parse_config(doc), 100) == (50, 25, 25)


def test_format_duration():
    assert format_duration(42) == "42 s"
    assert format_duration(600) == "10 min"
    assert format_duration(7200) == "2.0 h"


def test_training_time_follows_rows_not_steps():
    """Halving the batch doubles the steps but not the rows the model sees: the same training time."""
    def weight(batch: int):
        return estimate(_config({"strategy": "w", "optimizers": {
            "p": {"type": "random_search"}, "w": {"type": "finetune", "settings": {"epochs": 2, "batch_size": batch}}}})
        ).steps[1]
    eight, four = weight(8), weight(4)
    assert four.train_steps == 2 * eight.train_steps
    assert four.seconds == pytest.approx(eight.seconds)


def test_the_default_runs_estimate_is_near_its_measured_idle_time(monkeypatch: pytest.MonkeyPatch):
    """bench/default_run.py alone on a 2-core AMD EPYC (7 December 2026, 5b0c26f, the budget chosen on the
    validation rows), where `python -m core calibrate` measured calls x1.472 and training rows x1.525: support
    triage 451.5 s (the weight step trained 48 of its 80 steps, 210.4 s); the pump readings (the held-out
    variant, 6cc776c) 761.4 s (90 of 100 steps, 499.6 s). The estimate prices 70 % of the epoch bound: +15 % and
    -19 % (an early stop is the data's, not known before the run)."""
    from core.config.defaults import default_config, default_config_dict
    from core.config.schema import parse_config
    from core.plan import calibration

    measured = calibration.Calibration(calls=1.472, training=1.525, calibrated=True, measured_at="7 Dec 2026")
    monkeypatch.setattr(calibration, "current", lambda: measured)
    for template, seconds in (("support_triage", 451.5), ("pump_status", 761.4)):
        doc = default_config_dict(template)  # as those runs trained: whole rows, cut to 384 tokens
        doc["optimizers"]["w"]["settings"].update(share_prefix=False, max_length=384)
        result = estimate_from_source(parse_config(doc))  # with the sample's field lengths, as the page
        assert abs(result.seconds - seconds) / seconds < 0.2, (template, result.seconds)
    weight = next(s for s in estimate_from_source(default_config()).steps if s.optimizer == "finetune")
    assert weight.train_steps == 80  # at most 10 epochs of 30 rows, batch 4


def test_a_prompt_step_after_a_weight_step_without_demos_prices_the_upstream_search():
    """The label predictor was fine-tuned without demos: the last prompt step runs the program over training
    examples until k x (C + 1) pass (~1.5 runs each; the cache answers the upstream predictor, asked the same
    during the gold trace collection), then evaluates C sets of upstream demos; the current program's
    evaluation is answered by the cache. With no upstream predictor (one-module classifier) it costs nothing.
    Trained with demos, the step searches stratified demo sets again."""
    from core.config.defaults import default_config_dict

    doc = default_config_dict()  # support triage: extract -> classify, k = 2 demos, C = 2 sets, 10 validation
    final = estimate(parse_config(doc)).steps[-1]
    assert final.label == "p -> w -> p"
    assert (final.calls, final.cached) == (9 * 2 + 4 * 2 * 10, 2 * 2 * 10 + 9)
    single = estimate(parse_config(default_config_dict("classifier"))).steps[-1]
    assert single.calls == single.cached and single.seconds == 0.0
    doc["optimizers"] = {**doc["optimizers"], "w": {**doc["optimizers"]["w"],
                                                     "settings": {**doc["optimizers"]["w"]["settings"],
                                                                  "exclude_demos": False}}}
    searched = estimate(parse_config(doc)).steps[-1]
    assert (searched.calls, searched.cached) != (final.calls, final.cached) and searched.seconds > 0


def test_a_longer_answer_costs_more_on_the_embedded_models():
    """The same one-label classifier, as a Predict and as a ChainOfThought (which writes a ~200-character reasoning
    before its label): each call costs the reasoning's marker and tokens more, 13.8 ms each. The calls and the
    training are the same. And the tutorial's roles for analyze -> classify, measured alone (bench/default_run.py
    --template analyze_classify, 30 November 2026, before the template fine-tuned both): 385.1 s, then 347.0 s
    (training 139.8 s, then 97.4 s)."""
    def classifier(module: str):
        doc = default_config_dict("classifier")
        doc["program"] = {"kind": "stages", "stages": [{"name": "classify", "module": module,
                                                        "signature": "text -> label"}]}
        name = "classify" if module == "Predict" else "classify.predict"
        doc["predictors"] = {name: doc["predictors"]["classify"]}
        return parse_config(doc)

    predict, thinking = classifier("Predict"), classifier("ChainOfThought")
    plain, cot = estimate(predict), estimate(thinking)
    assert [s.calls for s in plain.steps] == [s.calls for s in cot.steps]
    per_call = [e.steps[0].seconds / e.steps[0].calls for e in (plain, cot)]
    assert per_call[1] - per_call[0] == pytest.approx(0.0138 * (8 + 200 / 4.5))
    sample = estimate_from_source(predict).steps[0]  # the classifier's reviews, ~93 characters
    assert 0.3 < sample.seconds / sample.calls < 0.5  # one label: measured 0.33-0.36 s (bench/call_time.py)
    tutorial = _tutorial_roles(default_config_dict("analyze_classify"))
    # the recipe it was measured with: 4 epochs, every row trained, no checkpoints scored
    tutorial["optimizers"]["w"]["settings"].update({"epochs": 4, "validation_fraction": 0.0})
    assert abs(estimate_from_source(parse_config(tutorial)).seconds - 347.0) / 347.0 < 0.15
    scripted = estimate(parse_config(scripted_config_dict("analyze_classify")))
    assert scripted.steps[0].seconds == pytest.approx(scripted.steps[0].calls * 0.002)  # embedded models only


def _inspected(config, table: Table | None):
    return inspected_program(config, data_label_choices(config, table))


def _classifier_table(text_chars: int) -> Table:
    labels = ["positive", "negative", "neutral"]
    rows = tuple({"text": f"{i} " + "w" * text_chars, "label": labels[i % 3]} for i in range(90))
    return Table(columns=("text", "label"), rows=rows, format="json")


def test_training_time_grows_with_the_length_of_the_data_the_rows_carry():
    """The one-module classifier trains on rows that carry the text: texts ten times longer make rows several
    times longer, and the weight step's training time grows with them (its fixed part and its number of calls do
    not; each call reads 1900 characters more). max_length 4096: no row is cut."""
    doc = default_config_dict("classifier")
    doc["optimizers"]["w"]["settings"]["max_length"] = 4096
    doc["optimizers"]["w"]["settings"]["validation_fraction"] = 0.0  # every row trained: rows = steps x batch
    config = parse_config(doc)
    short, long = estimate(config, table=_classifier_table(100)), estimate(config, table=_classifier_table(2000))
    program = _inspected(config, _classifier_table(100))
    short_tokens = training_row_tokens(config, program, _classifier_table(100))
    long_tokens = training_row_tokens(config, program, _classifier_table(2000))
    assert long_tokens - short_tokens == pytest.approx(1900 / CHARS_PER_TOKEN, rel=0.02)
    (short_w, long_w) = (next(s for s in e.steps if s.optimizer == "finetune") for e in (short, long))
    assert (short_w.calls, short_w.train_steps) == (long_w.calls, long_w.train_steps)
    rows = short_w.train_steps * 4  # batch size 4
    reading = (long_w.calls - long_w.cached) * SECONDS_PER_INPUT_CHAR["embedded"] * 1900
    assert long_w.seconds - short_w.seconds == pytest.approx(
        rows * SECONDS_PER_TRAIN_ROW["embedded"] * (long_tokens - short_tokens) / TRAINED_ROW_TOKENS + reading,
        rel=0.01)
    assert long.steps[0].seconds - short.steps[0].seconds == pytest.approx(  # the baseline: its calls read more
        long.steps[0].calls * SECONDS_PER_INPUT_CHAR["embedded"] * 1900)
    assert short.sizes == long.sizes == (30, 10, 20)
    assert any(f"~{long_tokens:.0f} tokens" in note for note in long.notes)


def test_rows_that_keep_the_demos_of_the_prompt_step_are_longer():
    """exclude_demos off: the weight step trains with the demos the prompt step before it left. Without the
    data, what its settings allow (2 bootstrapped + 1 labeled); with it, a stratified set shows every value of
    the label (5 here); without a prompt step before it there are none."""
    doc = default_config_dict("classifier")
    doc["optimizers"]["w"]["settings"] = {**doc["optimizers"]["w"]["settings"], "exclude_demos": False,
                                          "max_length": 4096,  # no row is cut
                                          "validation_fraction": 0.0}  # every row trained: rows = steps x batch
    config = parse_config(doc)
    shared_doc = copy.deepcopy(doc)
    doc["optimizers"]["w"]["settings"]["share_prefix"] = False  # every token of a row at a row's cost
    config = parse_config(doc)
    five_labels = Table(columns=("text", "label"), format="json",
                        rows=tuple({"text": f"text {i}", "label": "abcde"[i % 5]} for i in range(60)))
    doc["strategy"] = "w"
    alone_config = parse_config(doc)
    for table, demos, field_chars in ((None, 3, 200 + 8), (five_labels, 5, 6.8 + 1)):
        program = _inspected(config, table)
        plain, kept = (training_row_tokens(config, program, table, k) for k in (0, demos))
        assert kept - plain > demos * field_chars / CHARS_PER_TOKEN  # each demo: its text and label, and markup
        after_p = estimate(config, table=table).steps[2]  # p -> w
        alone = estimate(alone_config, table=table).steps[1]  # w
        assert after_p.train_steps == alone.train_steps
        assert after_p.seconds - alone.seconds == pytest.approx(
            (kept - plain) * alone.train_steps * 4 * SECONDS_PER_TRAIN_ROW["embedded"] / TRAINED_ROW_TOKENS,
            rel=0.01)
    # the demos are the same in every row of a step: with the shared prefix they cost SHARED_TOKEN_COST of that
    shared_doc["strategy"] = "p -> w"
    program = _inspected(config, five_labels)
    plain, kept = (training_row_tokens(config, program, five_labels, k) for k in (0, 5))
    shared_w = estimate(parse_config(shared_doc), table=five_labels).steps[2]
    shared_doc["strategy"] = "w"
    shared_alone = estimate(parse_config(shared_doc), table=five_labels).steps[1]
    assert shared_w.seconds - shared_alone.seconds == pytest.approx(
        SHARED_TOKEN_COST * (kept - plain) * shared_alone.train_steps * 4 * SECONDS_PER_TRAIN_ROW["embedded"]
        / TRAINED_ROW_TOKENS, rel=0.01)


def test_the_sample_tasks_rows_are_as_long_as_measured():
    """SmolLM2's tokenizer on the weight step's rows of the quality runs (30 November 2026): support triage
    414 tokens, the classifier 254, the document task 418; the pump readings 359 (its gold rows formatted by the
    ChatAdapter, SmolLM2's tokenizer: a digit is a token, so numbers take more tokens per character than text).
    The estimate formats them from the signatures and the sample data."""
    from core.config.defaults import default_config

    for template, measured in (("support_triage", 414), ("classifier", 254), ("analyze_classify", 418),
                               ("pump_status", 359)):
        config = default_config(template)
        table = load_table_from_path(data_source_path(config))
        tokens = training_row_tokens(config, _inspected(config, table), table)
        assert abs(tokens - measured) / measured < 0.1, (template, tokens)


def test_a_row_costs_its_tokens_up_to_the_weight_steps_max_length():
    """The provider cuts a row to max_length tokens before training on it (the classifier's ~590-token rows of
    1250-character reviews trained at the 0.60 s per row of 384-token rows): 2000-character texts make ~850-token
    rows, which cost 512 tokens' time under the default max_length and their whole length under 4096, less the
    discount of their shared prompt prefix (a cut row shares none: its prefix was cut)."""
    def weight_step(max_length: int | None, share: bool = False):
        doc = default_config_dict("classifier")
        doc["optimizers"]["w"]["settings"].update(validation_fraction=0.0, share_prefix=share)  # rows = steps x batch
        if max_length:
            doc["optimizers"]["w"]["settings"]["max_length"] = max_length
        result = estimate(parse_config(doc), table=_classifier_table(2000))
        return next(s for s in result.steps if s.optimizer == "finetune")

    config = parse_config(default_config_dict("classifier"))
    assert config.optimizers["w"].settings.max_length == 512 and TRAINED_ROW_TOKENS == 384
    assert config.optimizers["w"].settings.share_prefix
    program = _inspected(config, _classifier_table(2000))
    tokens, shared = training_row_parts(config, program, _classifier_table(2000))
    assert tokens > 1.5 * 512 and 100 < shared < 400  # the system message and the first field's marker
    cut, whole = weight_step(None), weight_step(4096)
    rows = cut.train_steps * 4
    assert whole.seconds - cut.seconds == pytest.approx(
        rows * SECONDS_PER_TRAIN_ROW["embedded"] * (tokens - 512) / TRAINED_ROW_TOKENS, rel=0.01)
    assert weight_step(None, share=True).seconds == pytest.approx(cut.seconds)  # cut: nothing shared
    assert whole.seconds - weight_step(4096, share=True).seconds == pytest.approx(
        rows * SECONDS_PER_TRAIN_ROW["embedded"] * (1 - SHARED_TOKEN_COST) * shared / TRAINED_ROW_TOKENS, rel=0.01)
    assert weight_step(256).seconds < cut.seconds  # a shorter bound, a shorter training
