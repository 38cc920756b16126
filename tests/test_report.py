"""smart_utils/report.py's statistics: the two-sided permutation test of a difference in means, and Holm's
correction over several such tests."""

import math

import numpy as np
import pytest

from smart_utils.report import holm, permutation_p_value


def test_permutation_p_values_and_their_holm_correction():
    rng = np.random.default_rng(0)
    same = rng.normal(size=30)
    assert permutation_p_value(same, same.copy(), permutations=199) > 0.5  # no difference: no evidence of one
    shifted = permutation_p_value(rng.normal(size=30), rng.normal(3, 1, size=30), permutations=199)
    assert shifted == pytest.approx(2 / 200)  # none as extreme: twice the smallest one-sided p, (0 + 1) / 200
    assert math.isnan(permutation_p_value(np.array([np.nan]), same))
    assert holm([0.01, 0.04, math.nan, 0.03]) == pytest.approx([0.03, 0.06, math.nan, 0.06], nan_ok=True)
