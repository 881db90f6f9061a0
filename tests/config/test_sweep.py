"""The sweep and executor of a run configuration: normalised strategies, checked seeds, bounded sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import config_to_dict, parse_config, parse_config_text, parse_draft
from core.config.sweep import MAX_SWEEP_SEEDS, MAX_SWEEP_STRATEGIES, LocalExecutorSpec, RayExecutorSpec
from core.errors import ConfigError


def _doc(**sweep: Any) -> dict[str, Any]:
    doc = scripted_config_dict("classifier")
    doc["sweep"] = sweep
    return doc


def test_a_sweep_is_normalised_and_round_trips() -> None:
    config = parse_config(_doc(strategies=["P->w", "p", "w → p"], seeds=[2, 0]))
    assert config.sweep is not None
    assert config.sweep.strategies == ["p -> w", "p", "w -> p"]
    assert config.sweep.seeds == [2, 0]
    assert isinstance(config.executor, LocalExecutorSpec)
    assert parse_config(config_to_dict(config)) == config


def test_no_sweep_by_default_and_the_seeds_default_to_three() -> None:
    assert parse_config(scripted_config_dict("classifier")).sweep is None
    assert parse_config(_doc(strategies=["p"])).sweep.seeds == [0, 1, 2]


def test_a_ray_executor_is_declared() -> None:
    doc = _doc(strategies=["p"], seeds=[0])
    doc["executor"] = {"kind": "ray", "address": "ray://head:10001"}
    config = parse_config(doc)
    assert isinstance(config.executor, RayExecutorSpec)
    assert config.executor.address == "ray://head:10001" and config.executor.max_parallel == 4


@pytest.mark.parametrize(("sweep", "message"), [
    ({"strategies": ["p", "q"], "seeds": [0]}, "sweep.strategies: Unknown step 'q'"),
    ({"strategies": ["p", "P -> "], "seeds": [0]}, "is empty (two separators in a row"),
    ({"strategies": ["p->w", "p -> w"], "seeds": [0]}, "listed twice"),
    ({"strategies": [], "seeds": [0]}, f"1 to {MAX_SWEEP_STRATEGIES} strategies, got 0"),
    ({"strategies": ["p"] * 3 + [f"p -> {'w -> ' * i}p" for i in range(MAX_SWEEP_STRATEGIES)], "seeds": [0]},
     f"1 to {MAX_SWEEP_STRATEGIES} strategies"),
    ({"strategies": ["p"], "seeds": [0, 1, 0]}, "seeds [0] are listed more than once"),
    ({"strategies": ["p"], "seeds": []}, f"1 to {MAX_SWEEP_SEEDS} seeds, got 0"),
    ({"strategies": ["p"], "seeds": list(range(MAX_SWEEP_SEEDS + 1))}, f"1 to {MAX_SWEEP_SEEDS} seeds, got 11"),
    ({"strategies": ["p"], "seeds": [-1]}, "seed -1 is out of range"),
    ({"strategies": ["p"], "seeds": [0], "extra": 1}, "sweep.extra: unknown field"),
])
def test_a_bad_sweep_is_refused_with_what_is_allowed(sweep: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_doc(**sweep))
    assert message in str(caught.value)


def test_a_weight_strategy_needs_a_small_predictor() -> None:
    doc = _doc(strategies=["p", "p -> w"], seeds=[0])
    doc["strategy"] = "p"
    for assignment in doc["predictors"].values():
        assignment["role"] = "large"
    with pytest.raises(ConfigError, match="strategy 'p -> w' has a weight step but no predictor has the role"):
        parse_config(doc)
    doc["sweep"]["strategies"] = ["p"]
    assert parse_config(doc).sweep.strategies == ["p"]


def test_a_draft_keeps_a_sweep_naming_keys_not_defined_yet() -> None:
    draft = parse_draft(_doc(strategies=["p", "x -> p"], seeds=[0]))
    assert draft.sweep.strategies == ["p", "x -> p"]


def test_an_unknown_executor_kind_is_refused() -> None:
    doc = _doc(strategies=["p"], seeds=[0])
    doc["executor"] = {"kind": "slurm"}
    with pytest.raises(ConfigError, match="executor: Input tag 'slurm'"):
        parse_config(doc)


def test_the_documented_example_has_a_valid_sweep() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    config = parse_config_text(text.split("```json", 1)[1].split("```", 1)[0])
    assert config.sweep.strategies == ["p", "p -> w", "p -> w -> p"] and config.sweep.seeds == [0, 1, 2]
    assert isinstance(config.executor, LocalExecutorSpec)
    assert '"sweep": {"strategies": ["p", "w", "p -> w", "w -> p", "p -> w -> p"], "seeds": [0, 1, 2]}' in text
