"""The Strategy page's sweep in the draft: on, off, which strategies and seeds, and the estimate of the
whole sweep against separate runs (what prefix sharing saves)."""

from __future__ import annotations

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.document import (
    build_config,
    draft_of,
    estimate_sweep,
    first_seeds,
    new_document,
    set_steps,
    set_sweep,
    sweep_choices,
    turn_sweep_on,
)
from core.errors import ConfigError, StrategyError
from core.plan.estimate import estimate
from core.plan.sweep import child_config


def test_turning_a_sweep_on_compares_the_strategy_and_its_prefixes_and_off_is_a_plain_run_again():
    draft = new_document()
    assert draft.sweep is None and draft.strategy == "p -> w -> p"
    on = turn_sweep_on(draft, True)
    assert (on.sweep.strategies, on.sweep.seeds) == (["p", "p -> w", "p -> w -> p"], [0, 1, 2])
    assert draft.sweep is None  # the old draft is left as it was
    assert turn_sweep_on(on, True) is on  # a sweep being edited is kept
    off = turn_sweep_on(on, False)
    assert off.sweep is None and off.strategy == "p -> w -> p"
    assert build_config(off).sweep is None


def test_set_sweep_normalises_and_names_what_is_refused():
    draft = set_sweep(new_document(), ["P->W", "w , p"], first_seeds(2))
    assert (draft.sweep.strategies, draft.sweep.seeds) == (["p -> w", "w -> p"], [0, 1])
    with pytest.raises(StrategyError, match=r"Unknown step 'q' \(step 1\) in strategy 'q'; allowed keys: p, w"):
        set_sweep(draft, ["p", "q"], [0])
    with pytest.raises(ConfigError, match="a sweep compares 1 to 8 strategies, got 0"):
        set_sweep(draft, [], [0])
    with pytest.raises(ConfigError, match="strategy 'p' is listed twice"):
        set_sweep(draft, ["p", "P"], [0])
    with pytest.raises(ConfigError, match="a sweep runs 1 to 10 seeds, got 11"):
        set_sweep(draft, ["p"], first_seeds(11))
    assert draft.sweep.strategies == ["p -> w", "w -> p"]


def test_the_choices_are_the_defined_presets_the_strategy_its_prefixes_and_the_sweeps_own():
    draft = set_sweep(new_document(), ["p -> w -> p -> w"], [0])
    assert sweep_choices(draft) == ["p", "w", "p -> w", "w -> p", "p -> w -> p", "p -> w -> p -> w"]
    only_prompts = set_steps(draft.model_copy(update={"optimizers": {"p": draft.optimizers["p"]}, "sweep": None}),
                             ["p", "p"])
    assert sweep_choices(only_prompts) == ["p", "p -> p"]


def _sweep_config(strategies: list[str], seeds: list[int]):
    doc = scripted_config_dict("classifier", tag="sweep-estimate")
    doc["sweep"] = {"strategies": strategies, "seeds": seeds}
    return parse_config(doc)


def test_the_estimate_covers_every_child_run_and_what_sharing_saves():
    config = _sweep_config(["p", "p -> w", "p -> w -> p", "w"], [0, 1, 2])
    result = estimate_sweep(config)
    assert [(c.seed, c.strategy, c.reuses_baseline) for c in result.children] == [
        (0, "p -> w -> p", False), (0, "w", True), (1, "p -> w -> p", False), (1, "w", True),
        (2, "p -> w -> p", False), (2, "w", True)]
    assert (result.child_runs, result.standalone_runs) == (6, 12)
    # separate runs: one estimate per strategy and seed, each a plain run of its child config
    separate = [estimate(child_config(config, seed, s)) for seed in (0, 1, 2) for s in ("p", "p -> w", "p -> w -> p", "w")]
    assert result.standalone_calls == sum(e.calls for e in separate)
    assert result.standalone_seconds == pytest.approx(sum(e.seconds for e in separate))
    # a child: its steps (no baseline when it reuses its seed's), then one test evaluation per strategy it holds
    # and its baseline
    longest, weights = estimate(child_config(config, 0, "p -> w -> p")), estimate(child_config(config, 0, "w"))
    per_test = longest.test_calls // 2
    assert result.children[0].calls == sum(s.calls for s in longest.steps) + (3 + 1) * per_test
    assert result.children[1].calls == sum(s.calls for s in weights.steps[1:]) + 1 * per_test
    assert result.calls < result.standalone_calls and 0 < result.seconds < result.standalone_seconds
    assert result.saved_seconds == pytest.approx(result.standalone_seconds - result.seconds)


def test_the_seed_changes_no_estimate_so_one_per_strategy_stands_for_every_seed():
    config = _sweep_config(["p -> w"], [0, 7])
    assert estimate(child_config(config, 0, "p -> w")) == estimate(child_config(config, 7, "p -> w"))
    with pytest.raises(ConfigError, match="the configuration has no 'sweep'"):
        estimate_sweep(build_config(draft_of(config.model_copy(update={"sweep": None}))))
