"""Tests of core.programs: templates, staged pipelines, validation, user files, definitions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import dspy
import pytest
from dspy.utils import DummyLM
from pydantic import TypeAdapter, ValidationError

from core.errors import ProgramError
from core.programs import (
    TEMPLATES,
    PredictorInfo,
    ProgramFields,
    ProgramSpec,
    Stage,
    StagedPipeline,
    StagesProgram,
    TemplateProgram,
    UserFileProgram,
    build_program,
    build_program_from_definition,
    describe_predictors,
    module_fields,
    parse_stage_signature,
    program_definition,
    program_fields,
    validate_stages,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "programs"

ANALYZE = Stage(
    name="analyze",
    module="ChainOfThought",
    signature="document -> analysis: str, key_findings: list[str]",
    instructions="Analyse the document.",
)
CLASSIFY = Stage(
    name="classify", module="Predict", signature="analysis, key_findings -> category: str, risk_level: str"
)


def user_file(name: str, class_name: str | None = None) -> UserFileProgram:
    return UserFileProgram(kind="user_file", path=str(FIXTURES / name), class_name=class_name)


def last_user_message(lm: DummyLM, index: int) -> str:
    return lm.history[index]["messages"][-1]["content"]


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


def test_program_spec_is_discriminated_on_kind() -> None:
    adapter = TypeAdapter(ProgramSpec)
    assert isinstance(adapter.validate_python({"kind": "template", "name": "classifier"}), TemplateProgram)
    stages = adapter.validate_python(
        {"kind": "stages", "stages": [{"name": "a", "module": "Predict", "signature": "x -> y"}]}
    )
    assert isinstance(stages, StagesProgram)
    assert isinstance(adapter.validate_python({"kind": "user_file", "path": "p.py"}), UserFileProgram)
    with pytest.raises(ValidationError, match="kind"):
        adapter.validate_python({"kind": "notebook", "name": "x"})


def test_unknown_template_lists_available() -> None:
    with pytest.raises(ValidationError, match=r"unknown template 'nope'.*analyze_classify"):
        TemplateProgram(kind="template", name="nope")


@pytest.mark.parametrize(
    "name", ["forward", "predictors", "named_predictors", "history", "__init__", "1st", "a b"]
)
def test_stage_name_rejects_reserved_and_non_identifiers(name: str) -> None:
    with pytest.raises(ValidationError, match=repr(name).replace("[", r"\[")):
        Stage(name=name, module="Predict", signature="x -> y")


def test_stage_module_must_be_predict_or_chain_of_thought() -> None:
    with pytest.raises(ValidationError, match="module"):
        Stage(name="a", module="ReAct", signature="x -> y")


def test_stages_program_limits_and_validates_stages() -> None:
    with pytest.raises(ValidationError):
        StagesProgram(kind="stages", stages=[])
    too_many = [Stage(name=f"s{i}", module="Predict", signature=f"x -> y{i}") for i in range(11)]
    with pytest.raises(ValidationError):
        StagesProgram(kind="stages", stages=too_many)
    with pytest.raises(ValidationError, match="unresolvable"):
        StagesProgram(kind="stages", stages=[CLASSIFY, ANALYZE])


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------

EXPECTED_PREDICTORS = {
    "analyze_classify": [
        ("analyze.predict", "ChainOfThought", "document -> reasoning, analysis, key_findings"),
        ("classify", "Predict", "analysis, key_findings -> category, risk_level"),
    ],
    "classifier": [("classify", "Predict", "text -> label")],
    "support_triage": [
        ("extract", "Predict", "ticket -> summary, product_area"),
        ("classify", "Predict", "ticket, summary -> intent, urgency"),
    ],
    "pump_status": [
        ("classify", "Predict", "bearing_temp, vibration, pressure, flow_rate -> status"),
    ],
}


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_template_builds_with_expected_predictors(key: str) -> None:
    template = TEMPLATES[key]
    program = build_program(TemplateProgram(kind="template", name=key))

    assert isinstance(program, StagedPipeline)
    infos = describe_predictors(program)
    assert [(i.name, i.module_type, i.signature) for i in infos] == EXPECTED_PREDICTORS[key]
    assert [name for name, _ in program.named_predictors()] == [i.name for i in infos]
    for info, stage in zip(infos, template.stages, strict=True):
        assert info.instructions == stage.instructions
        assert info.demos == 0
    fields = program_fields(TemplateProgram(kind="template", name=key))
    assert fields.inputs == template.input_fields
    assert fields.final_outputs == template.label_fields
    assert set(template.default_mapping) == {*template.input_fields, *template.label_fields}


def test_template_metadata() -> None:
    assert TEMPLATES["analyze_classify"].sample == "documents.csv"
    assert TEMPLATES["classifier"].sample == "sentiment.json"
    assert TEMPLATES["support_triage"].sample == "support_tickets.jsonl"
    assert TEMPLATES["pump_status"].sample == "pump_readings.csv"
    for template in TEMPLATES.values():
        assert all(stage.instructions for stage in template.stages)


def test_describe_predictors_shows_types() -> None:
    info = describe_predictors(build_program(TemplateProgram(kind="template", name="analyze_classify")))[0]
    assert isinstance(info, PredictorInfo)
    assert info.inputs == ("document: str",)
    assert info.outputs == ("reasoning: str", "analysis: str", "key_findings: list[str]")
    assert info.instructions == TEMPLATES["analyze_classify"].stages[0].instructions


# --------------------------------------------------------------------------------------------
# Staged pipeline
# --------------------------------------------------------------------------------------------


def test_pipeline_runs_and_feeds_earlier_outputs_forward() -> None:
    program = StagedPipeline([ANALYZE, CLASSIFY])
    lm = DummyLM(
        [
            {"reasoning": "thinking", "analysis": "REVENUE-UP-ANALYSIS", "key_findings": ["cloud growth"]},
            {"category": "growth", "risk_level": "low"},
        ]
    )
    with dspy.context(lm=lm):
        result = program(document="Q3 revenue increased 15% YoY.")

    assert isinstance(result, dspy.Prediction)
    assert result.analysis == "REVENUE-UP-ANALYSIS"
    assert result.key_findings == ["cloud growth"]
    assert result.category == "growth"
    assert result.risk_level == "low"
    assert len(lm.history) == 2
    assert "Q3 revenue increased 15% YoY." in last_user_message(lm, 0)
    second = last_user_message(lm, 1)
    assert "REVENUE-UP-ANALYSIS" in second
    assert "cloud growth" in second
    assert "Analyse the document." in lm.history[0]["messages"][0]["content"]


def test_pipeline_passes_program_inputs_to_later_stages() -> None:
    program = build_program(TemplateProgram(kind="template", name="support_triage"))
    lm = DummyLM(
        [{"summary": "LOGIN-FAILS", "product_area": "auth"}, {"intent": "fix_login", "urgency": "high"}]
    )
    with dspy.context(lm=lm):
        result = program(ticket="I cannot log in since yesterday")

    assert (result.summary, result.product_area, result.intent, result.urgency) == (
        "LOGIN-FAILS",
        "auth",
        "fix_login",
        "high",
    )
    second = last_user_message(lm, 1)
    assert "I cannot log in since yesterday" in second
    assert "LOGIN-FAILS" in second


def test_pipeline_accepts_dicts_and_rejects_missing_inputs() -> None:
    program = StagedPipeline([{"name": "classify", "module": "Predict", "signature": "text -> label"}])
    assert program.fields == ProgramFields(inputs=("text",), outputs=("label",), final_outputs=("label",))
    with pytest.raises(ProgramError, match=r"Missing program input.*text"):
        program(document="wrong field")


def test_save_load_round_trip_restores_instructions_and_demos(tmp_path: Path) -> None:
    program = StagedPipeline([ANALYZE, CLASSIFY])
    program.classify.signature = program.classify.signature.with_instructions("Optimised classify text.")
    program.classify.demos = [
        dspy.Example(analysis="a", key_findings=["k"], category="growth", risk_level="low")
    ]
    program.analyze.predict.demos = [
        dspy.Example(document="d", reasoning="r", analysis="a", key_findings=["k"]),
        dspy.Example(document="d2", reasoning="r2", analysis="a2", key_findings=["k2"]),
    ]
    path = tmp_path / "program.json"
    program.save(str(path))

    loaded = StagedPipeline([ANALYZE, CLASSIFY])
    loaded.load(str(path))

    infos = {info.name: info for info in describe_predictors(loaded)}
    assert infos["classify"].instructions == "Optimised classify text."
    assert infos["classify"].demos == 1
    assert infos["analyze.predict"].instructions == "Analyse the document."
    assert infos["analyze.predict"].demos == 2
    assert loaded.classify.demos[0]["category"] == "growth"


def test_deep_copy_is_independent() -> None:
    program = build_program(TemplateProgram(kind="template", name="analyze_classify"))
    clone = copy.deepcopy(program)
    clone.classify.demos.append(dspy.Example(analysis="a", category="c"))
    clone.classify.signature = clone.classify.signature.with_instructions("changed")

    assert isinstance(clone, StagedPipeline)
    assert clone.stages == program.stages
    assert program.classify.demos == []
    assert program.classify.signature.instructions != "changed"
    assert [n for n, _ in clone.named_predictors()] == ["analyze.predict", "classify"]
    assert program.deepcopy().fields == program.fields


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def test_validate_stages_returns_fields_in_first_use_order() -> None:
    stages = [
        Stage(name="extract", module="Predict", signature="ticket -> summary"),
        Stage(name="classify", module="ChainOfThought", signature="customer, summary, ticket -> intent"),
    ]
    assert validate_stages(stages) == ProgramFields(
        inputs=("ticket", "customer"), outputs=("summary", "intent"), final_outputs=("intent",)
    )


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        ("document", "exactly one '->'"),
        ("document -> ", "at least one output"),
        ("a b -> c", "invalid syntax"),
        ("a -> b: notatype", "notatype"),
        ("a -> b: list[", "does not match"),
    ],
)
def test_bad_signature_names_stage_text_reason_and_form(signature: str, reason: str) -> None:
    stages = [Stage(name="summarize", module="Predict", signature=signature)]
    with pytest.raises(ProgramError) as info:
        validate_stages(stages)
    message = str(info.value)
    assert "Stage 'summarize'" in message
    assert repr(signature) in message
    assert reason in message
    assert '"in1, in2 -> out1: type, out2"' in message


def test_duplicate_stage_names_rejected() -> None:
    stages = [
        Stage(name="step", module="Predict", signature="a -> b"),
        Stage(name="step", module="Predict", signature="b -> c"),
    ]
    with pytest.raises(ProgramError, match="'step' is used by stages 1 and 2"):
        validate_stages(stages)


def test_output_produced_twice_rejected() -> None:
    stages = [
        Stage(name="first", module="Predict", signature="a -> b"),
        Stage(name="second", module="Predict", signature="a -> b"),
    ]
    with pytest.raises(
        ProgramError, match="Field 'b' is produced by stage 'first' and again by stage 'second'"
    ):
        validate_stages(stages)


def test_stage_outputting_its_own_input_rejected() -> None:
    stages = [Stage(name="loop", module="Predict", signature="text, label -> label")]
    with pytest.raises(ProgramError, match=r"Stage 'loop'.*'label' is both an input and an output"):
        validate_stages(stages)


def test_unresolvable_input_names_field_stage_and_available_fields() -> None:
    stages = [
        Stage(name="extract", module="Predict", signature="ticket -> summary"),
        Stage(name="classify", module="Predict", signature="summary, notes -> intent"),
        Stage(name="annotate", module="Predict", signature="ticket -> notes"),
    ]
    with pytest.raises(ProgramError) as info:
        validate_stages(stages)
    message = str(info.value)
    assert "Stage 'classify' takes 'notes'" in message
    assert "later stage 'annotate'" in message
    assert "unresolvable" in message
    assert "available at stage 'classify': ticket, summary" in message


def test_chain_of_thought_stage_cannot_declare_reasoning() -> None:
    stages = [Stage(name="think", module="ChainOfThought", signature="q -> reasoning, answer")]
    with pytest.raises(ProgramError, match=r"Stage 'think'.*'reasoning'"):
        validate_stages(stages)


def test_invalid_stage_dict_becomes_program_error() -> None:
    with pytest.raises(ProgramError, match=r"Stage 'forward' is invalid.*dspy.Module"):
        validate_stages([{"name": "forward", "module": "Predict", "signature": "a -> b"}])
    with pytest.raises(ProgramError, match="1 to 10 stages"):
        validate_stages([])


def test_parse_stage_signature() -> None:
    assert parse_stage_signature("document -> analysis: str, key_findings: list[str]") == (
        ("document",),
        ("analysis", "key_findings"),
    )
    assert parse_stage_signature("a, b: dict[str, int] -> c") == (("a", "b"), ("c",))
    with pytest.raises(ProgramError, match="Invalid signature 'a -> -> b'"):
        parse_stage_signature("a -> -> b")


# --------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------


def test_user_file_refused_without_opt_in() -> None:
    spec = user_file("good_program.py")
    with pytest.raises(
        ProgramError, match=r"runs its code; enable 'allow user code' to load .*good_program.py"
    ):
        build_program(spec)


def test_user_file_loads_good_program() -> None:
    program = build_program(user_file("good_program.py"), allow_user_code=True)

    assert type(program).__name__ == "AnalysisPipeline"
    assert [(i.name, i.module_type) for i in describe_predictors(program)] == [
        ("analyze.predict", "ChainOfThought"),
        ("classify", "Predict"),
    ]
    assert program_fields(user_file("good_program.py"), allow_user_code=True) == ProgramFields(
        inputs=("document",),
        outputs=("analysis", "key_findings", "category", "risk_level"),
        final_outputs=("category", "risk_level"),
    )
    lm = DummyLM(
        [{"reasoning": "r", "analysis": "A", "key_findings": ["k"]}, {"category": "c", "risk_level": "l"}]
    )
    with dspy.context(lm=lm):
        assert program(document="doc").category == "c"
    assert copy.deepcopy(program).named_predictors()[1][0] == "classify"


def test_user_file_relative_path_and_class_name(tmp_path: Path) -> None:
    spec = UserFileProgram(kind="user_file", path="multiple_modules.py", class_name="Second")
    program = build_program(spec, allow_user_code=True, base_dir=FIXTURES)
    assert type(program).__name__ == "Second"


def test_user_file_kwargs_forward_takes_inputs_from_predictors() -> None:
    program = build_program(user_file("kwargs_program.py"), allow_user_code=True)
    assert module_fields(program) == ProgramFields(
        inputs=("ticket",), outputs=("summary", "intent"), final_outputs=("intent",)
    )


def test_each_load_is_a_fresh_module() -> None:
    first = build_program(user_file("good_program.py"), allow_user_code=True)
    second = build_program(user_file("good_program.py"), allow_user_code=True)
    assert type(first) is not type(second)


@pytest.mark.parametrize(
    ("name", "class_name", "pattern"),
    [
        ("missing.py", None, r"Program file not found: .*missing\.py"),
        ("notes.txt", None, r"notes\.txt is not a Python file"),
        ("syntax_error.py", None, r"Syntax error in .*syntax_error\.py:7: "),
        (
            "import_error.py",
            None,
            r"Import error while loading .*import_error\.py.*studio_no_such_package_xyz",
        ),
        (
            "no_module.py",
            None,
            r"No dspy\.Module subclass is defined in .*no_module\.py; classes found: Alpha, Beta",
        ),
        ("multiple_modules.py", None, r"several dspy\.Module subclasses \(First, Second\); set class_name"),
        ("multiple_modules.py", "Third", r"Class 'Third' is not a dspy\.Module .*available: First, Second"),
        ("constructor_raises.py", None, r"Creating NeedsKey\(\).*RuntimeError: OPENAI_API_KEY is not set"),
        ("no_predictors.py", None, r"Empty in .*no_predictors\.py has no predictors"),
    ],
)
def test_bad_user_files(name: str, class_name: str | None, pattern: str) -> None:
    with pytest.raises(ProgramError, match=pattern):
        build_program(user_file(name, class_name), allow_user_code=True)


def test_user_file_directory_is_rejected(tmp_path: Path) -> None:
    spec = UserFileProgram(kind="user_file", path=str(tmp_path))
    with pytest.raises(ProgramError, match="is not a file"):
        build_program(spec, allow_user_code=True)


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------


def test_template_definition_carries_stages_and_rebuilds() -> None:
    defn = program_definition(TemplateProgram(kind="template", name="analyze_classify"))
    defn = json.loads(json.dumps(defn))

    assert defn["kind"] == "template"
    assert defn["name"] == "analyze_classify"
    assert [s["name"] for s in defn["stages"]] == ["analyze", "classify"]
    rebuilt = build_program_from_definition(defn)
    original = build_program(TemplateProgram(kind="template", name="analyze_classify"))
    assert describe_predictors(rebuilt) == describe_predictors(original)


def test_stages_definition_round_trip() -> None:
    spec = StagesProgram(kind="stages", stages=[ANALYZE, CLASSIFY])
    rebuilt = build_program_from_definition(json.loads(json.dumps(program_definition(spec))))
    assert isinstance(rebuilt, StagedPipeline)
    assert rebuilt.stages == (ANALYZE, CLASSIFY)


def test_user_file_definition_carries_source_and_checks_hash(tmp_path: Path) -> None:
    defn = program_definition(user_file("good_program.py"))
    source = (FIXTURES / "good_program.py").read_text()

    assert defn["kind"] == "user_file"
    assert defn["source"] == source
    assert len(defn["sha256"]) == 64
    assert defn["file_name"] == "good_program.py"
    json.dumps(defn)

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / defn["file_name"]).write_text(defn["source"])
    with pytest.raises(ProgramError, match="allow user code"):
        build_program_from_definition(defn, source_dir=bundle)
    program = build_program_from_definition(defn, allow_user_code=True, source_dir=bundle)
    assert type(program).__name__ == "AnalysisPipeline"

    (bundle / defn["file_name"]).write_text(source + "\n# edited\n")
    with pytest.raises(ProgramError, match="has changed since the program was exported"):
        build_program_from_definition(defn, allow_user_code=True, source_dir=bundle)


def test_unknown_definition_kind() -> None:
    with pytest.raises(ProgramError, match="Unknown program definition kind 'zip'"):
        build_program_from_definition({"kind": "zip"})
