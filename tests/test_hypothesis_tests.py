"""Statistics checked against known values: textbook Mann-Whitney, Cliff's delta by hand, corrections."""

import itertools

import pytest

from monolayer.hypothesis_tests import (
    benjamini_hochberg, cliffs_delta, cliffs_magnitude, holm, mann_whitney,
)


def test_mann_whitney_small_example_against_its_exact_null_distribution():
    # By hand: a = [1, 4, 7], b = [2, 3, 5, 6, 8]; pairs with a > b: 4>2, 4>3, 7>2, 7>3, 7>5, 7>6,
    # so U_a = 6 (and U_b = 15 - 6 = 9).
    u, p = mann_whitney([1, 4, 7], [2, 3, 5, 6, 8])
    assert u == 6.0
    # Exact two-sided p: enumerate all C(8, 3) = 56 ways to draw group a from the pooled ranks.
    pooled = range(1, 9)
    us = [sum(1 for x in a for y in pooled if y not in a and x > y)
          for a in itertools.combinations(pooled, 3)]
    exact = 2 * min(sum(v <= 6 for v in us), sum(v >= 6 for v in us)) / len(us)
    assert p == pytest.approx(min(1.0, exact))


def test_mann_whitney_separated_groups():
    u, p = mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert u == 0.0
    assert p == pytest.approx(2 / 252)  # exact: only 1 of C(10,5)=252 arrangements, two-sided


def test_mann_whitney_degenerate():
    assert mann_whitney([0.5, 0.5], [0.5, 0.5]) == (2.0, 1.0)
    u, p = mann_whitney([], [1.0])
    assert u != u and p != p  # nan


def test_cliffs_delta_by_hand():
    # a = [1, 2, 3], b = [2, 4]: pairs (a>b, a<b): 1:(0,2) 2:(0,1) 3:(1,1) -> (1 - 4) / 6 = -0.5
    assert cliffs_delta([1, 2, 3], [2, 4]) == pytest.approx(-0.5)
    assert cliffs_delta([5, 6], [1, 2]) == 1.0
    assert cliffs_magnitude(-0.5) == "large" and cliffs_magnitude(0.1) == "negligible"


def test_holm_and_bh_known_values():
    p = [0.01, 0.02, 0.03, 0.04, 0.05]
    # Holm: sorted p * (m - rank), cumulative max: .05 .08 .09 .09 .09
    assert holm(p) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    # BH: p * m / rank, cumulative min from the top: all .05
    assert benjamini_hochberg(p) == pytest.approx([0.05] * 5)
    assert holm([0.5, float("nan")])[1] != holm([0.5, float("nan")])[1]
