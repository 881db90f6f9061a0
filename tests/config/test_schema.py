"""The run configuration: a valid document parses; every bad field names itself and what is allowed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from core.config.defaults import default_config_dict, scripted_config_dict
from core.config.schema import (
    config_to_dict,
    config_to_json,
    load_config,
    parse_config,
    parse_config_text,
    parse_draft,
)
from core.errors import ConfigError, StrategyError
from core.programs import TEMPLATES


@pytest.fixture
def doc() -> dict:
    return scripted_config_dict("analyze_classify")


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_default_configs_of_every_template_parse(template: str) -> None:
    config = parse_config(default_config_dict(template))
    if template == "support_triage":  # the first-run default: extract prompted, classify fine-tuned
        assert {n: a.role for n, a in config.predictors.items()} == {"extract": "large", "classify": "small"}
    if template == "analyze_classify":  # no larger model than the small one: both fine-tuned
        assert {a.role for a in config.predictors.values()} == {"small"}
    if template == "pump_status":  # the numeric table: its one Predict module fine-tuned, a 50/50/50 split
        assert {n: a.role for n, a in config.predictors.items()} == {"classify": "small"}
        assert config.data.split.sizes() == (50, 50, 50)
        assert config.data.source.name == "pump_readings.csv" and config.data.labels == ["status"]
    else:
        assert config.data.split.sizes() == (30, 10, 20)
    assert config.version == 1
    assert config.strategy == "p -> w -> p"
    roles = {name: a.role for name, a in config.predictors.items()}
    small = set(TEMPLATES[template].small_predictors(list(roles)))
    assert small and {n for n, role in roles.items() if role == "small"} == small
    assert all(spec.kind == "embedded" for spec in config.lms.values())


def test_a_default_document_is_the_callers_to_edit() -> None:
    """Editing the optimizers of one default document (as a test or a page does) leaves the next one as it was:
    once, a test that turned exclude_demos off changed the defaults of every later run in the process."""
    first = default_config_dict("classifier")
    first["optimizers"]["w"]["settings"]["exclude_demos"] = False
    first["optimizers"]["p"]["settings"]["num_candidate_programs"] = 9
    second = default_config_dict("classifier")
    assert second["optimizers"]["w"]["settings"]["exclude_demos"] is True
    assert second["optimizers"]["p"]["settings"]["num_candidate_programs"] == 2


def test_strategy_is_normalised(doc: dict) -> None:
    doc["strategy"] = "P->w ->  p"
    assert parse_config(doc).strategy == "p -> w -> p"


def test_unknown_strategy_key_names_allowed_keys(doc: dict) -> None:
    doc["strategy"] = "p -> x"
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert "'x'" in str(e.value) and "p" in str(e.value) and "w" in str(e.value)


def test_unknown_field_is_named(doc: dict) -> None:
    doc["limits"] = {"num_threads": 1, "trheads": 3}
    with pytest.raises(ConfigError, match=r"limits\.trheads: unknown field"):
        parse_config(doc)


def test_out_of_range_value_names_field_value_and_bound(doc: dict) -> None:
    doc["optimizers"] = {"p": {"type": "random_search", "settings": {"max_bootstrapped_demos": 99}}}
    doc["strategy"] = "p"
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    message = str(e.value)
    assert "optimizers.p.random_search.settings.max_bootstrapped_demos" in message
    assert "99" in message and "16" in message


def test_unknown_optimizer_type_lists_allowed(doc: dict) -> None:
    doc["optimizers"] = {"p": {"type": "copro"}, "w": {"type": "finetune"}}
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert "copro" in str(e.value) and "random_search" in str(e.value) and "gepa" in str(e.value)
    assert "finetune" in str(e.value)


def test_predictor_on_undefined_lm(doc: dict) -> None:
    doc["predictors"]["classify"]["lm"] = "nope"
    with pytest.raises(ConfigError, match=r"predictor 'classify' uses LM 'nope'.*defined LMs: \['large', 'small'\]"):
        parse_config(doc)


def test_bad_role_lists_allowed_roles(doc: dict) -> None:
    doc["predictors"]["classify"]["role"] = "medium"
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert "predictors.classify.role" in str(e.value) and "'large'" in str(e.value) and "'small'" in str(e.value)


def test_user_factory_needs_opt_in(doc: dict) -> None:
    doc["lms"]["large"] = {"kind": "factory", "factory": "mypkg.lms:make"}
    with pytest.raises(ConfigError, match="runs your code; set allow_user_code"):
        parse_config(doc)
    doc["allow_user_code"] = True
    assert parse_config(doc).lms["large"].factory == "mypkg.lms:make"


def test_user_file_program_needs_opt_in(doc: dict) -> None:
    doc["program"] = {"kind": "user_file", "path": "prog.py"}
    with pytest.raises(ConfigError, match="allow_user_code"):
        parse_config(doc)


def test_weight_step_without_small_predictor(doc: dict) -> None:
    for assignment in doc["predictors"].values():
        assignment["role"] = "large"
    with pytest.raises(ConfigError, match="weight step but no predictor has the role 'small'"):
        parse_config(doc)
    doc["strategy"] = "p"
    assert parse_config(doc).strategy == "p"


def test_the_configuration_answers_which_kind_each_step_is(doc: dict) -> None:
    doc["strategy"] = "p -> w -> m -> p"
    doc["optimizers"] = {"p": {"type": "random_search"}, "w": {"type": "finetune"},
                         "m": {"type": "mipro", "settings": {"num_trials": 2}}}
    config = parse_config(doc)
    assert [(s.key, s.type, s.kind) for s in config.steps()] == [
        ("p", "random_search", "prompt"), ("w", "finetune", "weight"), ("m", "mipro", "prompt"),
        ("p", "random_search", "prompt")]
    assert config.steps()[2].settings.num_trials == 2
    assert config.step_keys() == ["p", "w", "m", "p"]
    assert config.step_kind("w") == "weight" and config.step_kind("m") == "prompt"
    assert config.step_kinds() == {"p": "prompt", "w": "weight", "m": "prompt"}
    with pytest.raises(StrategyError, match=r"step key 'x' is not defined; defined keys: p, w, m"):
        config.step_kind("x")


def test_a_draft_answers_for_its_defined_steps_and_names_the_undefined_one(doc: dict) -> None:
    doc["strategy"] = "w -> x"  # a draft may name a key the user has not defined yet
    draft = parse_draft(doc)
    assert draft.step_keys() == ["w", "x"]
    assert draft.step_kind("w") == "weight"
    with pytest.raises(StrategyError, match="'x' is not defined"):
        draft.steps()


def test_split_mixing_counts_and_ratios(doc: dict) -> None:
    doc["data"]["split"] = {"train": 30, "val": 0.2, "test": 0.2, "seed": 0}
    with pytest.raises(ConfigError, match="mix counts and ratios"):
        parse_config(doc)
    doc["data"]["split"] = {"train": 0.7, "val": 0.3, "test": 0.2, "seed": 0}
    with pytest.raises(ConfigError, match="add up to 1.20"):
        parse_config(doc)


def test_unsupported_version(doc: dict) -> None:
    doc["version"] = 2
    with pytest.raises(ConfigError, match="unsupported configuration version 2; this app reads version 1"):
        parse_config(doc)


def test_not_an_object_and_bad_json() -> None:
    with pytest.raises(ConfigError, match="must be a JSON object, got list"):
        parse_config([])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not valid JSON: .* line 1"):
        parse_config_text("{nope")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "missing.json")


def test_typed_api_key_never_dumped(doc: dict) -> None:
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/gpt-4o-mini", "api_key": "sk-CANARY-123"}
    config = parse_config(doc)
    assert config.lms["hosted"].api_key.get_secret_value() == "sk-CANARY-123"
    assert "CANARY" not in config_to_json(config)
    assert "api_key" not in config_to_dict(config)["lms"]["hosted"]


def test_round_trip_through_json(doc: dict, tmp_path) -> None:
    path = tmp_path / "run.json"
    path.write_text(config_to_json(parse_config(doc)))
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(parse_config(copy.deepcopy(doc)))
    assert json.loads(path.read_text())["version"] == 1


def test_the_documented_example_is_a_valid_configuration() -> None:
    """docs/config.md's complete example must stay in step with the schema."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    block = text.split("```json", 1)[1].split("```", 1)[0]
    config = parse_config_text(block)
    assert config.strategy == "p -> w -> p"
    assert config.lms["large"].grammar == "gbnf"
    assert set(config.optimizers) == {"p", "m", "g", "w"}
    assert config.optimizers["g"].settings.budget == ("auto", "light")


HUGE = 100_000


def _refusal(doc: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    return str(e.value)


def test_a_huge_name_is_refused_in_a_short_message_that_says_its_length(doc: dict) -> None:
    doc["name"] = "n" * HUGE
    message = _refusal(doc)
    assert message.startswith("invalid run configuration: name: String should have at most 200 characters")
    assert f"({HUGE} characters)" in message and len(message) < 500


def test_huge_user_names_and_tags_give_short_messages(doc: dict) -> None:
    lm = "L" * HUGE
    doc["predictors"]["classify"]["lm"] = lm  # an undefined LM, named by a huge name
    message = _refusal(doc)
    assert "predictor 'classify' uses LM 'LLL" in message and f"({HUGE} characters)" in message
    assert len(message) < 500
    doc = scripted_config_dict("analyze_classify")
    doc["lms"][lm] = {"kind": "k" * HUGE, "model": "x"}  # a huge key and a huge union tag
    message = _refusal(doc)
    assert message.count(f"({HUGE} characters)") == 2 and "expected tags: 'embedded', 'litellm', 'factory'" in message
    assert len(message) < 500


def test_a_huge_strategy_or_step_key_gives_a_short_message(doc: dict) -> None:
    doc["strategy"] = "p -> " * HUGE + "p"
    assert f"({len(doc['strategy'])} characters)" in (message := _refusal(doc)) and len(message) < 500
    doc = scripted_config_dict("analyze_classify")
    key = "k" * HUGE
    doc["optimizers"] = {"p": {"type": "random_search"}, key: {"type": "finetune"}}
    doc["strategy"] = "p -> q"
    message = _refusal(doc)
    assert "Unknown step 'q'" in message and f"allowed keys: p, {'k' * 20}" in message and len(message) < 500
    doc["optimizers"] = {"P" * HUGE: {"type": "random_search"}}
    assert "step key 'PPP" in (message := _refusal(doc)) and len(message) < 500
