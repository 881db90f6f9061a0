"""One table of fine-tuning hyper-parameters: the run configuration and the LoRA provider agree on
every default, type and range, and both name the parameter, the value and the range when refusing one.

No model is loaded: ``parse_train_kwargs`` is the provider's validation, the weight step runs on the
scripted LM.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import get_args

import dspy
import pytest

from core.config.schema import parse_config
from core.errors import ConfigError, LMError
from core.lms.lora.params import FLAGS, PARAMS, TrainParams, parse_train_kwargs, train_overrides, train_value
from core.lms.scripted import make_lm
from core.optimizers.finetune import FinetuneSettings
from core.optimizers.weights import RoleAwareFinetune, WeightStepHooks
from core.programs import Stage, StagedPipeline
from core.programs.metrics import make_metric

KEY = "smollm2-135m"
SHARED = [name for name in FinetuneSettings.model_fields if name in PARAMS]
NUMERIC = [name for name in SHARED if not PARAMS[name].choices]


def test_the_config_exposes_the_provider_hyper_parameters_it_always_had() -> None:
    assert SHARED == ["epochs", "max_steps", "learning_rate", "lora_rank", "lora_alpha", "batch_size", "max_length",
                      "micro_batch_tokens", "validation_fraction", "patience", "eval_every", "max_minutes", "serve"]


@pytest.mark.parametrize("name", NUMERIC)
def test_config_field_has_the_provider_default_type_and_range(name: str) -> None:
    spec = PARAMS[name]
    info = FinetuneSettings.model_fields[name]
    assert info.default == spec.default
    assert type(info.default) is type(spec.default)
    assert info.annotation == (spec.kind | None if spec.optional else spec.kind)
    schema = FinetuneSettings.model_json_schema()["properties"][name]
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    low_key = "exclusiveMinimum" if spec.low_open else "minimum"
    high_key = "exclusiveMaximum" if spec.high_open else "maximum"
    assert (schema.get(low_key), schema.get(high_key)) == (spec.low, spec.high)
    assert info.description == spec.description


def _step_outside(spec, bound: float, direction: int) -> float:
    return bound + direction * (1 if spec.kind is int else 1e-9 * max(1.0, abs(bound)))


@pytest.mark.parametrize("name", NUMERIC)
def test_config_and_provider_accept_and_refuse_the_same_values(name: str, tmp_path: Path) -> None:
    spec = PARAMS[name]
    inside = [spec.default, spec.high if not spec.high_open else spec.high / 2]
    if not spec.low_open:
        inside.append(spec.low)
    outside = [_step_outside(spec, spec.high, +1), _step_outside(spec, spec.low, -1 if not spec.low_open else 0)]
    for value in inside:
        assert getattr(FinetuneSettings(**{name: value}), name) == value
        params, _ = parse_train_kwargs(KEY, {"output_dir": str(tmp_path), name: value})
        assert getattr(params, name) == value
    for value in outside:
        with pytest.raises(ValueError, match=name):
            FinetuneSettings(**{name: value})
        with pytest.raises(LMError, match=rf"train_kwargs\['{name}'\] = .* is out of range; allowed: .*{name}"):
            parse_train_kwargs(KEY, {"output_dir": str(tmp_path), name: value})


def test_serve_is_a_choice_the_config_and_the_provider_share(tmp_path: Path) -> None:
    spec = PARAMS["serve"]
    info = FinetuneSettings.model_fields["serve"]
    assert spec.choices == ("lora", "merged") and spec.default in spec.choices
    assert (info.default, get_args(info.annotation), info.description) == (spec.default, spec.choices, spec.description)
    for value in spec.choices:
        assert FinetuneSettings(serve=value).serve == value
        assert parse_train_kwargs(KEY, {"output_dir": str(tmp_path), "serve": value})[0].serve == value
    with pytest.raises(ValueError, match="serve"):
        FinetuneSettings(serve="both")
    with pytest.raises(LMError) as caught:
        parse_train_kwargs(KEY, {"output_dir": str(tmp_path), "serve": "both"})
    assert str(caught.value) == ("train_kwargs['serve'] = 'both' is not allowed; allowed: serve one of lora, merged "
                                 f"(default {spec.default})")


def test_train_params_defaults_are_the_table() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(TrainParams)}
    assert set(defaults) == {*PARAMS, *FLAGS, "quant"}
    assert {name: defaults[name] for name in PARAMS} == {name: spec.default for name, spec in PARAMS.items()}
    params, _ = parse_train_kwargs("gemma3-270m", {"output_dir": "out"})
    assert params == TrainParams(quant="Q8_0")
    assert FinetuneSettings().train_kwargs() == {**{name: PARAMS[name].default for name in SHARED},
                                                 "gradient_checkpointing": FLAGS["gradient_checkpointing"],
                                                 "release_served_models": FLAGS["release_served_models"],
                                                 "share_prefix": FLAGS["share_prefix"]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 50}, "train_kwargs['epochs'] = 50 is out of range; allowed: 1 <= epochs <= 20 (an int; default 2)"),
        ({"max_length": 8192}, "train_kwargs['max_length'] = 8192 is out of range; allowed: 32 <= max_length <= 4096"),
        ({"learning_rate": 0}, "train_kwargs['learning_rate'] = 0.0 is out of range; allowed: 0.0 < learning_rate"),
        ({"lora_alpha": 16.5}, "train_kwargs['lora_alpha'] = 16.5 is not an integer; allowed: 1 <= lora_alpha <= 512"),
        ({"max_steps": "ten"}, "train_kwargs['max_steps'] = 'ten' is not a number; allowed: 1 <= max_steps <= 10000"
                               " (an int, or None; default None)"),
    ],
)
def test_provider_errors_name_the_parameter_value_and_range(kwargs: dict, message: str) -> None:
    with pytest.raises(LMError) as caught:
        parse_train_kwargs(KEY, {"output_dir": "out", **kwargs})
    assert str(caught.value).startswith(message)


def test_config_errors_name_the_field_value_and_range() -> None:
    from core.config.defaults import scripted_config_dict

    doc = scripted_config_dict()
    doc["optimizers"] = {"p": {"type": "random_search"}, "w": {"type": "finetune", "settings": {"max_length": 8192}}}
    with pytest.raises(ConfigError, match=r"optimizers\.w\.finetune\.settings\.max_length: .*less than or equal to 4096 "
                                          r"\(got 8192\)"):
        parse_config(doc)


def test_weight_step_hands_every_setting_to_the_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    large = make_lm("large", tag="tp1", hints={"alpha": {"label": "red"}})
    small = make_lm("small", tag="tp1", hints={"alpha": {"label": "red"}})
    received: list[dict] = []
    finetune = small.provider.finetune

    def recording(job, model, train_data, train_data_format, train_kwargs):
        received.append(dict(train_kwargs))
        return finetune(job, model, train_data, train_data_format, train_kwargs)

    monkeypatch.setattr(small.provider, "finetune", recording)
    settings = FinetuneSettings(epochs=3, max_steps=5, learning_rate=0.02, lora_rank=8, lora_alpha=12, batch_size=2,
                                max_length=256, serve="merged", trace_source="gold")
    program = StagedPipeline([Stage(name="classify", module="Predict", signature="text -> label: str")])
    program.classify.lm = small
    step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["classify"], settings,
                             WeightStepHooks(output_dir=tmp_path), seed=7)
    trainset = [dspy.Example(text=f"alpha {i}", label="red").with_inputs("text") for i in range(4)]
    with dspy.context(lm=large, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        step.compile(program, trainset=trainset)
    assert len(received) == 1
    sent = received[0]
    assert {name: sent[name] for name in [*SHARED, *FLAGS.keys() - {"bf16"}]} == settings.train_kwargs()
    assert sent["seed"] == 7
    params, _ = parse_train_kwargs(KEY, sent)  # what the weight step sends, the LoRA provider accepts
    assert (params.epochs, params.max_steps, params.lora_alpha, params.seed, params.serve) == (3, 5, 12, 7, "merged")


def test_train_value_is_the_table_default_when_omitted() -> None:
    for name, spec in PARAMS.items():
        assert train_value({}, name) == spec.default
        assert train_value({name: None}, name) == spec.default
        assert train_value(None, name) == spec.default
    assert train_value({"epochs": 5}, "epochs") == 5
    with pytest.raises(LMError, match=r"train_kwargs\['batch_size'\].* out of range"):
        train_value({"batch_size": 0}, "batch_size")


def _scripted_steps(tmp_path: Path, rows: int, **kwargs: object) -> int:
    """Training steps the scripted provider ran for ``rows`` rows and ``kwargs`` (read from its meta.json)."""
    row = {"messages": [{"role": "user", "content": "[[ ## text ## ]]\nalpha"},
                        {"role": "assistant", "content": "[[ ## label ## ]]\nred\n\n[[ ## completed ## ]]"}]}
    lm = make_lm("small", tag="defaults")
    out = tmp_path / uuid.uuid4().hex
    name = lm.provider.finetune(None, lm.model, [row] * rows, "chat", {"output_dir": str(out), **kwargs})
    meta = next(out.rglob("meta.json"))
    assert name.startswith(lm.model)
    return json.loads(meta.read_text())["train"]["steps"]


def test_the_scripted_provider_takes_omitted_hyper_parameters_from_the_table(tmp_path: Path) -> None:
    rows = 20
    batches = -(-rows // PARAMS["batch_size"].default)
    assert _scripted_steps(tmp_path, rows) == PARAMS["epochs"].default * batches
    assert _scripted_steps(tmp_path, rows, epochs=1, batch_size=4) == 5
    assert _scripted_steps(tmp_path, rows, max_steps=2) == 2
    with pytest.raises(LMError, match=r"train_kwargs\['epochs'\].* out of range"):
        _scripted_steps(tmp_path, rows, epochs=0)


def test_the_lora_provider_takes_omitted_hyper_parameters_from_the_table() -> None:
    params, _ = parse_train_kwargs(KEY, {"output_dir": "out"})
    assert {name: getattr(params, name) for name in PARAMS} == {name: spec.default for name, spec in PARAMS.items()}


def test_recipes_state_only_what_they_change_of_the_table() -> None:
    from core.config.defaults import EMBEDDED_OPTIMIZERS, EMBEDDED_TRAIN_OVERRIDES

    assert EMBEDDED_TRAIN_OVERRIDES == {"epochs": 10, "batch_size": 4, "learning_rate": 3e-3}
    settings = EMBEDDED_OPTIMIZERS["w"]["settings"]
    assert {name: value for name, value in settings.items() if name in PARAMS} == EMBEDDED_TRAIN_OVERRIDES
    assert FinetuneSettings(**settings).lora_rank == PARAMS["lora_rank"].default  # not restated: the table's
    assert train_overrides(epochs=1, max_steps=2) == {"epochs": 1, "max_steps": 2}
    with pytest.raises(LMError, match=r"override\(s\) lora_rank=16 equal the PARAMS default"):
        train_overrides(epochs=4, lora_rank=PARAMS["lora_rank"].default)
    with pytest.raises(LMError, match="unknown fine-tuning hyper-parameter.*epoch; allowed: epochs"):
        train_overrides(epoch=4)
    with pytest.raises(LMError, match=r"train_kwargs\['epochs'\].* out of range"):
        train_overrides(epochs=99)


def test_the_training_peak_is_its_own_not_an_earlier_one_of_the_process() -> None:
    """A long-lived process (the app, these tests) peaked before a fine-tune; the fine-tune's peak starts afresh
    while the process's lifetime peak is kept."""
    from core.lms.lora.params import peak_rss_mb, restart_peak_rss, window_peak_rss_mb

    big = bytearray(400 * 2**20)  # touched: 400 MiB resident
    big[:: 4096] = b"\1" * len(big[:: 4096])
    high = window_peak_rss_mb()
    del big
    assert restart_peak_rss()  # Linux
    window = window_peak_rss_mb()
    assert window < high - 300, (window, high)
    assert peak_rss_mb() >= high - 1  # the kernel keeps its high-water mark lazily: within pages of it
    small = bytearray(100 * 2**20)
    small[:: 4096] = b"\1" * len(small[:: 4096])
    # the new window follows what the process holds now (other threads may have freed memory meanwhile, so the
    # growth is not measured against ``window``), and stays under the earlier peak
    from core.lms.lora.device import current_rss_mb

    assert current_rss_mb() - 20 <= window_peak_rss_mb() < high
    del small
