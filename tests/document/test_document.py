"""The run document the pages edit is a typed ``RunDraft``: every edit returns a new, validated draft and
leaves the old one alone; a draft holds what a ``RunConfig`` refuses (and says why before a run);
``build_config`` is where the checks across fields run and where typed API keys join, never the draft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import document
from core.config.defaults import default_config_dict, scripted_config
from core.config.schema import RunConfig, RunDraft, StagesDraft, config_to_dict, parse_config
from core.errors import ConfigError, ProgramError, StrategyError, StudioError
from core.programs import Stage, StagesProgram

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-typed-DRAFT-0123456789"


def test_the_default_draft_is_a_typed_document_that_builds() -> None:
    draft = document.new_document()
    assert type(draft) is RunDraft and draft.program.kind == "template"
    config = document.build_config(draft)
    assert isinstance(config, RunConfig) and config_to_dict(config) == config_to_dict(parse_config(default_config_dict()))
    assert document.draft_of(config) == draft


def test_edits_return_new_drafts_and_leave_the_old_one_as_it_was() -> None:
    draft = document.new_document()
    before = draft.model_dump_json()
    edited = document.use_scripted(draft, True, delay=0.01)
    edited = document.set_template(edited, "analyze_classify")
    edited = document.set_stages(edited, document.stages_of(edited))
    edited = document.add_litellm(edited, "hosted", {"model": "openai/gpt-4o-mini"})
    edited, refused = document.assign_predictors(edited, [{"predictor": "classify", "lm": "large", "role": "large"}])
    edited = document.role_preset(edited, "last_small")
    edited = document.set_split(edited, 20, 10, 10, 3)
    edited = document.set_steps(edited, ["p", "w"])
    edited = document.add_optimizer(edited, "m", "mipro")
    edited = document.set_settings(edited, "p", {"num_candidate_programs": 3})
    edited = document.set_labels(edited, ["category"])
    assert draft.model_dump_json() == before  # nothing was changed in place
    assert refused == [] and type(edited) is RunDraft
    assert (edited.program.kind, edited.data.labels, edited.strategy) == ("stages", ["category"], "p -> w")
    assert edited.optimizers["p"].settings.num_candidate_programs == 3 and edited.optimizers["m"].type == "mipro"
    assert document.is_scripted(edited) and document.scripted_delay(edited) == 0.01
    assert edited.data.split.seed == 3 and document.run_problems(edited) == []


def test_edits_refuse_bad_values_with_one_line_naming_the_field_and_the_rule() -> None:
    draft = document.new_document()
    cases = [
        (lambda: document.set_split(draft, 0.5, 0.6, 0.2, 0), ConfigError, "data.split: split ratios add up to 1.30"),
        (lambda: document.set_settings(draft, "p", {"num_candidate_programs": 0}), StrategyError,
         "step 'p', num_candidate_programs: Input should be greater than or equal to 1"),
        (lambda: document.add_litellm(draft, "hosted", {"model": "no-provider"}), ConfigError,
         "LM 'hosted', model: String should match pattern"),
        (lambda: document.add_litellm(draft, "large", {"model": "openai/x"}), ConfigError, "taken by the built-in"),
        (lambda: document.add_local(draft, "small", {"path": "/models/m"}), ConfigError, "taken by the built-in"),
        (lambda: document.add_local(draft, "mine", {"path": "/models/m", "weights": "/models/w"}), ConfigError,
         "LM 'mine': weights is only for a .gguf path"),
        (lambda: document.add_local(draft, "mine", {"path": "/models/m", "quant": "Q2"}), ConfigError,
         "LM 'mine', quant: Input should be 'F32', 'F16'"),
        (lambda: document.remove_lm(draft, "large"), ConfigError, "is used by extract"),
        (lambda: document.set_steps(draft, ["p", "x"]), StrategyError, "x"),
        (lambda: document.set_metric(draft, "nope"), ConfigError, "allowed metrics: exact_match"),
        (lambda: document.revise(draft.data, inputs=[]), ConfigError, "inputs: List should have at least 1 item"),
        (lambda: document.revise(draft, lms={"x": {"kind": "embedded"}}), ConfigError, "lms.x.embedded.model"),
    ]
    for edit, error, message in cases:
        with pytest.raises(error) as caught:
            edit()
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_local_lm_joins_the_draft_as_the_configuration_writes_it() -> None:
    draft = document.add_local(document.new_document(), "mine", {"path": "/models/m.gguf", "weights": "",
                                                                  "quant": "Q8_0"})
    assert config_to_dict(draft)["lms"]["mine"] == {"kind": "local", "path": "/models/m.gguf", "weights": None,
                                                    "quant": "Q8_0", "temperature": 0.0, "max_tokens": 512}
    assert document.lm_capabilities(draft, "mine")[0] is False  # a .gguf without its folder: inference only
    assert document.remove_lm(draft, "mine").lms == document.new_document().lms


def test_edits_name_a_huge_value_by_its_start_and_length() -> None:
    draft = document.new_document()
    huge = "h" * 100_000
    cases = [
        (lambda: document.add_litellm(draft, huge, {"model": "openai/x"}), ConfigError, "LM name 'hhh"),
        (lambda: document.add_optimizer(draft, huge.upper(), "mipro"), StrategyError, "step key 'HHH"),
        (lambda: document.add_optimizer(draft, "m", huge), StrategyError, "optimizer 'hhh"),
        (lambda: document.set_metric(draft, huge), ConfigError, "metric 'hhh"),
        (lambda: document.use_sample(draft, huge), ConfigError, "sample name 'hhh"),
        (lambda: document.set_steps(draft, ["p", huge]), StrategyError, "'hhh"),
    ]
    for edit, error, start in cases:
        with pytest.raises(error) as caught:
            edit()
        message = str(caught.value)
        assert start in message and "(100000 characters)" in message and len(message) < 500, message[:600]


def test_edit_messages_share_one_format_and_never_dump_a_whole_object() -> None:
    draft = document.new_document()
    with pytest.raises(ConfigError) as caught:
        document.add_litellm(draft, "hosted", {"model": "", "api_base": "http://x"})  # the form's empty model
    assert str(caught.value) == "LM 'hosted', model: Field required"
    with pytest.raises(ConfigError) as caught:
        document.use_sample(draft, "../secrets.csv")
    assert str(caught.value).startswith("data.source: ") and str(caught.value).endswith("(got '../secrets.csv')")
    with pytest.raises(StrategyError) as caught:
        document.set_settings(draft, "w", {"trace_source": "nope"})
    assert str(caught.value).startswith("step 'w', trace_source: Input should be 'auto', 'self'")


def test_a_draft_holds_what_a_config_refuses_and_says_why_before_a_run() -> None:
    draft = document.use_scripted(document.new_document(), True)
    # a pipeline being fixed: each stage well formed, the order not (yet) resolvable
    fixing = document.keep_stages(draft, list(reversed(document.stages_of(draft))))
    assert isinstance(fixing.program, StagesDraft)
    with pytest.raises(ProgramError, match="only produced by the later stage"):
        document.program_spec(fixing)
    assert "only produced by the later stage" in document.run_problems(fixing)[0]
    with pytest.raises(ConfigError, match="invalid run configuration: program.stages"):
        document.build_config(fixing)
    # a weight step with no small predictor: a problem shown on the Run page, not a refused edit
    prompts_only = document.role_preset(draft, "all_large")
    assert "has a weight step but no predictor has the role 'small'" in document.run_problems(prompts_only)[0]
    fixed = document.set_steps(prompts_only, ["p"])
    assert document.run_problems(fixed) == [] and isinstance(document.build_config(fixed), RunConfig)


def test_a_config_program_is_a_draft_program_and_a_fixed_pipeline_becomes_a_config_program() -> None:
    stages = [Stage(name="classify", module="Predict", signature="text -> label")]
    draft = document.set_stages(document.new_document(), stages)
    config = document.build_config(draft)
    assert isinstance(config.program, StagesProgram) and config.program.stages == stages
    assert document.draft_of(config).program == draft.program


def test_uploaded_user_code_waits_for_the_opt_in(tmp_path: Path) -> None:
    uploaded = json.loads(json.dumps(scripted_config("classifier").model_dump(mode="json")))
    uploaded["allow_user_code"] = True
    uploaded["lms"]["large"] = {"kind": "factory", "factory": "user_lms:make", "options": {"a": 1}}
    draft = document.document_from_json(json.dumps(uploaded))
    assert type(draft) is RunDraft and draft.allow_user_code is False  # the file's claim is not consent
    problems = document.run_problems(draft)
    assert len(problems) == 1 and "calls the factory user_lms:make" in problems[0] and "I trust this code" in problems[0]
    with pytest.raises(ConfigError, match="runs your code; set allow_user_code"):
        document.build_config(draft)
    from core.config.trust import with_user_code

    assert document.build_config(with_user_code(draft, True)).allow_user_code is True


def test_typed_api_keys_join_the_built_config_and_never_the_draft() -> None:
    draft = document.add_litellm(document.new_document(), "hosted",
                                 {"model": "openai/gpt-4o-mini", "api_key": KEY})  # a form's key is dropped
    assert KEY not in repr(draft) and KEY not in draft.model_dump_json()
    config = document.build_config(draft, {"hosted": KEY, "large": "ignored-not-litellm"})
    assert config.typed_api_keys() == {"hosted": KEY}
    assert KEY not in json.dumps(config_to_dict(config)) and KEY not in draft.model_dump_json()
    assert document.draft_of(config).model_dump_json() == draft.model_dump_json()


def test_data_edits_follow_the_table(studio_home: Path) -> None:
    draft = document.set_template(document.new_document(), "analyze_classify")
    path, table = document.save_upload((ROOT / "data" / "documents.csv").read_bytes(), "docs.csv")
    on_file = document.use_file(draft, path, table)
    assert on_file.data.source.kind == "file" and document.data_path(on_file) == path
    assert on_file.data.mapping == draft.data.mapping  # same columns: the mapping is kept
    unmapped = document.set_mapping(on_file, {"document": "", "category": "category"})
    assert "document" not in unmapped.data.mapping
    assert document.check_data(unmapped, table).mapping is not None
    back = document.use_sample(unmapped, "documents.csv")
    assert back.data.source.kind == "sample" and back.data.mapping["document"] == "document"
    with pytest.raises(StudioError, match="data.source"):
        document.use_sample(draft, "../secrets.csv")


def _register(monkeypatch: pytest.MonkeyPatch, key: str, settings: type) -> None:
    """A declared step type for ``settings`` (only its settings are read here)."""
    from core.config.steps import STEP_TYPES, StepType

    monkeypatch.setitem(STEP_TYPES, key, StepType(key=key, kind="prompt", summary="a test row", settings=settings))


def test_settings_fields_give_the_form_kind_of_every_annotation_a_settings_model_may_have(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typing import Literal, Optional

    from pydantic import Field

    from core.optimizers.entry import Settings

    class Wide(Settings):
        instruction: str = Field("Answer carefully.", description="set on every predictor")
        note: str | None = None
        temperature: float | None = Field(None, ge=0.0, le=2.0)
        ratio: float = 0.5
        count: int = Field(3, ge=1, le=9)
        cap: Optional[int] = None  # noqa: UP045 - the typing spelling is read like ``int | None``
        style: Literal["short", "long"] = "short"
        level: Literal["low", "high"] | None = None
        flag: bool = False
        maybe: bool | None = None
        judge_lm: str | None = Field(None, json_schema_extra={"choices": "lms", "unset": "no judge"})

    _register(monkeypatch, "wide", Wide)
    fields = {f.name: f for f in document.settings_fields("wide")}
    assert {name: f.kind for name, f in fields.items()} == {
        "instruction": "text", "note": "optional_text", "temperature": "optional_float", "ratio": "float",
        "count": "int", "cap": "optional_int", "style": "choice", "level": "optional_choice", "flag": "bool",
        "maybe": "optional_bool", "judge_lm": "optional_choice"}
    assert {f.kind.removeprefix("optional_") for f in fields.values()} == set(document.SETTING_KINDS)
    assert (fields["count"].minimum, fields["count"].maximum, fields["temperature"].maximum) == (1, 9, 2.0)
    assert fields["instruction"].default == "Answer carefully." and fields["instruction"].help == "set on every predictor"
    assert fields["style"].options == ("short", "long") and fields["level"].options == ("low", "high")
    draft = document.use_scripted(document.new_document(), True)
    judge = fields["judge_lm"]
    assert (judge.choices, judge.unset, judge.optional) == ("lms", "no judge", True)
    assert document.setting_options(draft, judge) == tuple(draft.lms) == ("large", "small")
    assert document.setting_options(draft, fields["style"]) == ("short", "long")


def test_the_real_optimizers_settings_have_form_kinds_and_the_teacher_lm_is_an_lm_name() -> None:
    for key in document.SETTINGS_MODELS:
        assert document.settings_fields(key), key  # raises for a setting the page cannot show
    teacher = next(f for f in document.settings_fields("finetune") if f.name == "teacher_lm")
    assert (teacher.kind, teacher.choices, teacher.unset) == ("optional_choice", "lms", "large role")


def test_a_setting_the_page_cannot_show_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import Field

    from core.optimizers.entry import Settings

    class Tags(Settings):
        tags: list[str] = Field(default_factory=list)

    class Union2(Settings):
        size: int | float = 1

    class BadSource(Settings):
        judge: str | None = Field(None, json_schema_extra={"choices": "models"})

    class NotText(Settings):
        judge: int = Field(1, json_schema_extra={"choices": "lms"})

    for key, settings, message in [
        ("tags", Tags, "optimizer 'tags', setting 'tags': the Strategy page cannot show a setting of type list[str]; "
                       "allowed: bool, int, float, str, a Literal of values, or one of them | None"),
        ("union2", Union2, "optimizer 'union2', setting 'size': the Strategy page cannot show a setting of type "
                           "int | float"),
        ("bad_source", BadSource, "optimizer 'bad_source', setting 'judge': choices 'models' is not a source of "
                                  "values; allowed: lms"),
        ("not_text", NotText, "setting 'judge': choices 'lms' names text values; annotate the setting str"),
    ]:
        _register(monkeypatch, key, settings)
        with pytest.raises(StrategyError) as caught:
            document.settings_fields(key)
        assert message in str(caught.value), str(caught.value)
    with pytest.raises(StrategyError, match="optimizer 'nope' is unknown; allowed: random_search, mipro, gepa, finetune"):
        document.settings_fields("nope")
