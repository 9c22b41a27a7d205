import math
import random

import pytest

from pgolf.stats import acceptance, regularized_beta, t_sf


def slow_t_sf(t, df, steps=200_000):
    """P(T > t) by integrating Student's t density (trapezoid rule on a wide finite range)."""

    def pdf(x):
        return (
            math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2))
            / math.sqrt(df * math.pi)
            * (1 + x * x / df) ** (-(df + 1) / 2)
        )

    hi = 400.0
    h = (hi - t) / steps
    return h * (0.5 * pdf(t) + sum(pdf(t + i * h) for i in range(1, steps)) + 0.5 * pdf(hi))


@pytest.mark.parametrize("t,df", [(0.0, 2), (1.5, 2), (4.2, 2), (-1.0, 3), (2.0, 9)])
def test_t_tail_matches_numerical_integral(t, df):
    expected = slow_t_sf(t, df) if t >= 0 else 1 - slow_t_sf(-t, df)
    assert t_sf(t, df) == pytest.approx(expected, abs=2e-4)


def test_regularized_beta_symmetry():
    rng = random.Random(0)
    for _ in range(20):
        a, b, x = rng.uniform(0.3, 5), rng.uniform(0.3, 5), rng.random()
        assert regularized_beta(a, b, x) == pytest.approx(1 - regularized_beta(b, a, 1 - x), abs=1e-10)


def test_acceptance_of_upstream_1855_against_1810():
    # the three seeds of PR #1855's submission.json against the then leaderboard's 1.0810
    losses, bpbs = [2.31944212, 2.32239991, 2.32423994], [1.05989454, 1.06124613, 1.06208695]
    result = acceptance(losses, bpbs, 1.0810)
    assert result["delta_nats"] == pytest.approx(-0.04359, abs=2e-4)
    assert result["accepted"] is True and result["p_value"] < 0.01


def test_single_seed_has_no_p_value():
    result = acceptance([2.3], [1.06], 1.07)
    assert result["p_value"] is None and result["accepted"] is None


def test_readme_verdict_never_prints_none():
    from pgolf.stats import acceptance
    from pgolf.submission import verdict

    one = acceptance([2.0], [1.0], comparison_bpb=1.5)
    assert verdict(one) == "accepted: undecided (1 seed; the t-test needs at least 2)"
    three = acceptance([2.0, 2.0, 2.0], [1.0, 1.001, 0.999], comparison_bpb=1.5)
    assert verdict(three) == "accepted: yes" and three["accepted"] is True
    worse = acceptance([2.0, 2.0, 2.0], [1.6, 1.601, 1.599], comparison_bpb=1.5)
    assert verdict(worse) == "accepted: no"
