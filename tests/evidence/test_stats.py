"""The sweep statistics on hand-made numbers with known answers."""

from __future__ import annotations

import math

import pytest

from core.evidence.stats import bootstrap_interval, comparison_sentence, mean_sd, paired_comparison, sign_test_p


def test_mean_and_sample_sd() -> None:
    mean, sd = mean_sd([60.0, 70.0, 80.0])
    assert mean == 70.0 and sd == pytest.approx(10.0)
    assert mean_sd([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert mean_sd([55.0]) == (55.0, None)
    assert mean_sd([]) == (None, None)


def test_sign_test_p_values() -> None:
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024)  # all ten non-tied pairs one way
    assert sign_test_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert sign_test_p(2, 8) == sign_test_p(8, 2)
    assert sign_test_p(5, 5) == 1.0
    assert sign_test_p(0, 0) == 1.0


def test_bootstrap_is_reproducible_and_about_right() -> None:
    values = [100.0] * 200 + [0.0] * 200  # mean 50, standard error 2.5: a 95% interval of about 50 +- 4.9
    low, high = bootstrap_interval([values], rng_seed=3)
    assert 44.0 < low < 46.5 and 53.5 < high < 56.0
    assert bootstrap_interval([values], rng_seed=3) == (low, high)
    assert bootstrap_interval([[7.0] * 30]) == (7.0, 7.0)
    with pytest.raises(ValueError):
        bootstrap_interval([[]])


def test_the_bootstrap_resamples_within_each_seed() -> None:
    # seed 0 always +100, seed 1 always 0: resampling within seeds keeps the mean at exactly 50
    assert bootstrap_interval([[100.0] * 10, [0.0] * 10]) == (50.0, 50.0)


def test_a_clear_win() -> None:
    pairs = {0: [(1.0, 0.0)] * 12 + [(1.0, 1.0)] * 8, 1: [(1.0, 0.0)] * 10 + [(0.0, 0.0)] * 10}
    c = paired_comparison("p -> w -> p", "p", pairs)
    assert (c.pairs, c.wins, c.losses, c.ties) == (40, 22, 0, 18)
    assert c.mean_diff == pytest.approx(55.0)
    assert c.ci_low < 55.0 < c.ci_high and c.ci_low > 30.0
    assert c.p_value == pytest.approx(2 / 2**22)
    assert c.significant
    half = (c.ci_high - c.ci_low) / 2
    assert c.sentence.startswith(f"p -> w -> p beats p by 55.0 ± {half:.1f} points (95% CI {c.ci_low:.1f} to ")
    assert "22 wins, 0 losses, 18 ties on 40 paired test answers; sign test p < 0.0001" in c.sentence
    assert paired_comparison("p -> w -> p", "p", pairs) == c  # seeded: the same interval every time


def test_the_winner_is_named_first_whichever_side_it_is_on() -> None:
    c = paired_comparison("p", "w", {0: [(0.0, 1.0)] * 15 + [(1.0, 1.0)] * 5})
    assert c.mean_diff == pytest.approx(-75.0) and c.significant
    assert c.sentence.startswith("w beats p by 75.0 ± ")
    assert "15 wins, 0 losses, 5 ties" in c.sentence


def test_noise_is_called_noise() -> None:
    c = paired_comparison("p", "w", {0: [(1.0, 0.0), (0.0, 1.0)] * 10 + [(1.0, 1.0)] * 5})
    assert c.mean_diff == 0.0 and not c.significant and c.p_value == 1.0
    assert c.ci_low < 0.0 < c.ci_high
    assert c.sentence.startswith("no difference beyond noise between p and w (+0.0 points, 95% CI ")
    same = paired_comparison("p", "p -> w", {0: [(1.0, 1.0)] * 5, 1: [(0.0, 0.0)] * 5})
    assert (same.ties, same.mean_diff, same.ci_low, same.ci_high, same.significant) == (10, 0.0, 0.0, 0.0, False)


def test_partial_scores_count_in_points() -> None:
    c = paired_comparison("a", "b", {0: [(0.5, 0.25)] * 4})
    assert c.mean_diff == pytest.approx(25.0) and (c.wins, c.ties) == (4, 0)


def test_no_pairs_yet() -> None:
    c = paired_comparison("a", "b", {})
    assert (c.pairs, c.mean_diff, c.significant) == (0, None, False)
    assert c.sentence == "no paired test results for a and b yet" == comparison_sentence(c)
