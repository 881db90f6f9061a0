"""A sweep's child runs: only the strategies no other one extends run; a seed's baseline is evaluated once."""

from __future__ import annotations

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.errors import ConfigError
from core.plan.sweep import ChildPlan, child_config, is_prefix, maximal_strategies, plan_sweep


def _config(strategies: list[str], seeds: list[int]):
    doc = scripted_config_dict("classifier")
    doc["sweep"] = {"strategies": strategies, "seeds": seeds}
    return parse_config(doc)


def test_prefixes() -> None:
    assert is_prefix("p", "p -> w -> p") and is_prefix("p -> w", "p -> w -> p") and is_prefix("w", "w")
    assert not is_prefix("w", "p -> w") and not is_prefix("p -> w -> p", "p -> w")
    assert maximal_strategies(["p", "w", "p -> w", "w -> p", "p -> w -> p"]) == ["p -> w -> p", "w -> p"]
    assert maximal_strategies(["w", "p"]) == ["w", "p"]


def test_the_default_template_strategies_share_one_run_per_seed() -> None:
    plan = plan_sweep(_config(["p", "p -> w", "p -> w -> p"], [0, 1, 2]))
    assert plan.children == tuple(ChildPlan(seed, "p -> w -> p", ("p", "p -> w", "p -> w -> p")) for seed in (0, 1, 2))
    assert (plan.child_runs, plan.standalone_runs) == (3, 9)
    assert plan.holder(1, "p -> w") == plan.children[1]


def test_a_seed_with_several_runs_evaluates_its_baseline_once() -> None:
    plan = plan_sweep(_config(["p", "w", "p -> w", "w -> p", "p -> w -> p"], [0, 1]))
    assert [(c.seed, c.strategy, c.covers, c.baseline_from) for c in plan.children] == [
        (0, "p -> w -> p", ("p", "p -> w", "p -> w -> p"), None),
        (0, "w -> p", ("w", "w -> p"), (0, "p -> w -> p")),
        (1, "p -> w -> p", ("p", "p -> w", "p -> w -> p"), None),
        (1, "w -> p", ("w", "w -> p"), (1, "p -> w -> p")),
    ]
    assert plan.holder(0, "w").strategy == "w -> p"
    with pytest.raises(ConfigError, match="no run of strategy 'w' with seed 7"):
        plan.holder(7, "w")


def test_a_config_without_a_sweep_is_refused() -> None:
    with pytest.raises(ConfigError, match="has no 'sweep'"):
        plan_sweep(parse_config(scripted_config_dict("classifier")))


def test_a_child_config_is_a_plain_run_of_its_strategy_and_seed() -> None:
    config = _config(["p", "p -> w"], [0, 5])
    child = child_config(config, 5, "p -> w")
    assert (child.strategy, child.seed, child.sweep) == ("p -> w", 5, None)
    assert child.data.split == config.data.split  # the same test examples for every seed
    assert child.name == f"{config.name} · p -> w · seed 5"
